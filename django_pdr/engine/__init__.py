"""The replication engine: one module per job (see docs/concepts.md, "Architecture").

    runner.py      ReflectionRunner: one pass of a reflection, orchestrating the others
    describe.py    the tables, mapping and value types of a reflection, described once
    positions.py   where a pass starts: checkpoint against the capture registry
    load.py        the initial load / resync, in key-ordered chunks
    stream.py      read -> batch -> apply, pipelined
    apply.py       Python-path writes in the checkpoint's fence; refused rows isolated
    textpath.py    rows passed as text between engines of one family
    checkpoint.py  the checkpoint row and its fence (also used by pdr-verify --repair)
    visibility.py  which events are safe to read (gaps and their proofs)

Import what you need from its module (this package imports nothing, so that the
modules it uses, such as ``maintenance``, may import ``engine.visibility``).
"""
