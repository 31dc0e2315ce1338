"""django-pdr large-row benchmark: the worker's peak memory on rows of 1-60 MB values.

    .venv/bin/python bench/bigrows.py                       # the working tree's library
    .venv/bin/python bench/bigrows.py --library head        # git HEAD's (a "before" figure)
    .venv/bin/python bench/bigrows.py --sizes 1,8 --pairs pg-pg,pg-my --rows 6

Starts its own PostgreSQL 15 server (sources and destinations, separate databases) and
MariaDB 10.11 server (max_allowed_packet 1 GB: a 60 MB bytes value spelled as a SQL
literal takes up to twice its size, more than the test servers' 16 MB), under /tmp,
stopped and removed at the end.

For each pair and value size S: a table ``big (id, t text, b bytes, j JSON)``; after its
(empty) initial load, ``--rows`` rows are inserted, one per transaction, by the source's
own SQL (SQLite: bound parameters), row i holding one value of S MB: text (with tabs,
newlines and backslashes, which COPY and SQL literals escape), bytes (every byte value)
or a JSON document (``{"k": "<text>"}``), in turn.  Then the worker catches up in a fresh
process (bench/_worker.py: ``run_round`` until caught up) and its peak RSS (VmHWM) is
recorded; the destination is compared with the source row by row: same Python type
family (str / bytes) and the same SHA-256 of each value (JSON: the text, exact).
Prints a table and writes it to bench/results-bigrows[-TAG].txt.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import Bench, BenchMariaDB, BenchPostgres, Source, log, my_connect, pg_admin  # noqa: E402

MB = 1 << 20
PAIRS = {"pg-pg": ("postgresql", "postgresql"), "pg-my": ("postgresql", "mysql"),
         "my-pg": ("mysql", "postgresql"), "sqlite-pg": ("sqlite", "postgresql"),
         "sqlite-sqlite": ("sqlite", "sqlite")}
DDL = {
    "postgresql": "CREATE TABLE big (id bigint PRIMARY KEY, t text, b bytea, j json)",
    "mysql": "CREATE TABLE big (id bigint PRIMARY KEY, t longtext, b longblob, j json) ENGINE=InnoDB",
    "sqlite": "CREATE TABLE big (id BIGINT PRIMARY KEY, t TEXT, b BLOB, j JSON)",
}
#: 64 characters of text: letters, a tab, a newline and a backslash (escaped by COPY and
#: by SQL literals).
TEXT_UNIT = "The quick brown fox\tjumps over\nthe lazy dog \\ 0123456789 abcdefg"
assert len(TEXT_UNIT) == 64
#: 256 bytes: every byte value once, as hex.
BYTES_HEX = bytes(range(256)).hex()


class BigMariaDB(BenchMariaDB):
    def _popen(self, cmd, **kwargs):
        super()._popen(cmd + ["--max-allowed-packet=1G"], **kwargs)


def insert_rows(src: Source, rows: int, size: int):
    """Rows 1..rows: row i holds one value of ``size`` bytes (text, bytes, JSON in turn)."""
    conn = src.connect()
    cur = conn.cursor()
    for i in range(1, rows + 1):
        kind = "tbj"[(i - 1) % 3]
        if src.kind in ("postgresql", "mysql"):
            value = ({"t": f"repeat(%s, {size // 64})", "b": f"decode(repeat(%s, {size // 256}), 'hex')",
                      "j": f"('{{\"k\": \"' || repeat(%s, {(size - 10) // 64}) || '\"}}')::json"}
                     if src.kind == "postgresql" else
                     {"t": f"REPEAT(%s, {size // 64})", "b": f"UNHEX(REPEAT(%s, {size // 256}))",
                      "j": f"CONCAT('{{\"k\": \"', REPEAT(%s, {(size - 10) // 64}), '\"}}')"})[kind]
            unit = {"t": TEXT_UNIT, "b": BYTES_HEX, "j": TEXT_UNIT.replace("\t", "\\t").replace("\n", "\\n")
                    .replace("\\ ", "\\\\ ")}[kind]
            cur.execute(f"INSERT INTO big (id, {kind}) VALUES ({i}, {value})", (unit,))
            conn.commit()
        else:
            json_unit = TEXT_UNIT.replace("\t", "\\t").replace("\n", "\\n").replace("\\ ", "\\\\ ")
            value = {"t": lambda: TEXT_UNIT * (size // 64), "b": lambda: bytes(range(256)) * (size // 256),
                     "j": lambda: '{"k": "' + json_unit * ((size - 10) // 64) + '"}'}[kind]()
            cur.execute("BEGIN")
            cur.execute(f"INSERT INTO big (id, {kind}) VALUES (?, ?)", (i, value))
            cur.execute("COMMIT")
            del value
    conn.close()


def digests(db: Source) -> dict:
    """{id: ((column, type family, sha256) of each non-NULL value)}, read one row at a time."""
    out = {}
    conn = db.connect()
    cur = conn.cursor()
    cur.execute("SELECT id FROM big ORDER BY id")
    ids = [r[0] for r in cur.fetchall()]
    mark = "?" if db.kind == "sqlite" else "%s"
    for i in ids:
        cast = "j::text" if db.kind == "postgresql" else "j"
        cur.execute(f"SELECT t, b, {cast} FROM big WHERE id = {mark}", (i,))
        row = cur.fetchone()
        found = []
        for name, value in zip("tbj", row):
            if value is None:
                continue
            family = "bytes" if isinstance(value, (bytes, bytearray, memoryview)) else type(value).__name__
            data = bytes(value) if family == "bytes" else str(value).encode("utf-8")
            found.append((name, family, hashlib.sha256(data).hexdigest()[:16], len(data)))
        out[i] = tuple(found)
        del row
    if db.kind != "sqlite":
        conn.rollback()
    conn.close()
    return out


class BigBench(Bench):
    def start_servers(self, mariadb=True):
        self.pga = BenchPostgres()
        self.pga.label = "postgresql"
        todo = [self.pga] + ([BigMariaDB()] if mariadb else [])
        errors = []

        def start(s):
            try:
                s.start()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(s,)) for s in todo]
        self.servers.extend(todo)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        self.my = todo[1] if mariadb else None

    def database(self, kind, name):
        srv = {"postgresql": self.pga, "mysql": self.my, "sqlite": None}[kind]
        if kind == "postgresql":
            pg_admin(srv, f'CREATE DATABASE "{name}"')
            return Source(kind, srv, name)
        if kind == "mysql":
            conn = my_connect(srv, "pdr")
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            conn.close()
            return Source(kind, srv, name)
        path = os.path.join(self.workdir, f"{name}.sqlite3")
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        return Source(kind, path=path)

    def run_one(self, pair, size_mb, rows):
        src_kind, dst_kind = PAIRS[pair]
        tag = f"{pair.replace('-', '_')}_{size_mb}"
        src = self.database(src_kind, f"src_{tag}")
        src.execute(DDL[src_kind])
        dst = self.database(dst_kind, f"dst_{tag}")
        refl = self.reflection(src.model(f"src-{tag}"), "big", dst.model(f"dst-{tag}"), tag)
        self.worker_pass(refl)  # the (empty) initial load: streaming from here
        t0 = time.monotonic()
        insert_rows(src, rows, size_mb * MB)
        log(f"{pair} {size_mb} MB: {rows} rows inserted in {time.monotonic() - t0:.1f} s")
        rep = self.timed_worker(refl)
        expected, got = digests(src), digests(dst)
        ok = expected == got and len(got) == rows
        if not ok:
            bad = [i for i in expected if expected[i] != got.get(i)]
            log(f"{pair} {size_mb} MB: DESTINATION DIFFERS at ids {bad[:5]}: "
                f"{[expected[i] for i in bad[:1]]} vs {[got.get(i) for i in bad[:1]]}")
        commits = rep["calls"].get("destination transaction (fence+apply+checkpoint+commit)", 0)
        result = {"pair": pair, "size_mb": size_mb, "rows": rows, "moved_mb": rows * size_mb,
                  "rss_start_mb": rep["rss_start_mb"], "rss_peak_mb": rep["rss_peak_mb"],
                  "seconds": rep["seconds"], "events": rep["events"], "python_commits": commits,
                  "status": rep["status"], "ok": ok}
        log(f"{pair} {size_mb} MB x {rows}: peak RSS {rep['rss_peak_mb']:.0f} MB "
            f"(start {rep['rss_start_mb']:.0f}), {rep['seconds']:.1f} s, status {rep['status']}, "
            f"destination {'matches' if ok else 'DIFFERS'}")
        self.drop(src)
        self.drop(dst)
        return result

    def drop(self, db):
        """Free the disk of a finished run (the worktree's databases are throwaway anyway)."""
        from django_pdr.connections import dispose_all

        dispose_all()
        try:
            if db.kind == "postgresql":
                pg_admin(db.server, f'DROP DATABASE "{db.name}" WITH (FORCE)')
            elif db.kind == "mysql":
                conn = my_connect(db.server, "pdr")
                with conn.cursor() as cur:
                    cur.execute(f"DROP DATABASE `{db.name}`")
                conn.close()
            else:
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(db.path + suffix):
                        os.remove(db.path + suffix)
        except Exception as exc:  # noqa: BLE001
            log(f"dropping {db.name or db.path}: {exc}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", choices=["worktree", "head"], default="worktree")
    parser.add_argument("--sizes", default="1,8,32,60", help="value sizes in MB")
    parser.add_argument("--pairs", default="pg-pg,pg-my,my-pg,sqlite-pg,sqlite-sqlite")
    parser.add_argument("--rows", type=int, default=6, help="rows per run (one value of the size each)")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    pairs = args.pairs.split(",")
    bench = BigBench(args)
    results = []
    try:
        bench.snapshot(args.library)
        bench.start_servers(mariadb=any("my" in p for p in pairs))
        bench.setup_django()
        for pair in pairs:
            for size in sizes:
                results.append(bench.run_one(pair, size, args.rows))
    finally:
        bench.stop_servers()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    lines = [f"bench/bigrows.py {' '.join(sys.argv[1:])}".rstrip(),
             f"library: {bench.library}; git HEAD {head}; {time.strftime('%Y-%m-%d %H:%M')}",
             f"{args.rows} rows per run, one value of the size each (text, bytes, JSON in turn), "
             f"inserted after the initial load; worker catch-up in a fresh process",
             "",
             f"{'pair':<14}{'value MB':>9}{'moved MB':>9}{'RSS start':>10}{'peak RSS':>10}{'peak-start':>11}"
             f"{'/ value':>8}{'seconds':>8}  ok"]
    for r in results:
        grown = r["rss_peak_mb"] - r["rss_start_mb"]
        lines.append(f"{r['pair']:<14}{r['size_mb']:>9}{r['moved_mb']:>9}{r['rss_start_mb']:>10.0f}"
                     f"{r['rss_peak_mb']:>10.0f}{grown:>11.0f}{grown / r['size_mb']:>8.1f}"
                     f"{r['seconds']:>8.1f}  {'yes' if r['ok'] else 'NO'}"
                     + ("" if r["status"] == "running" else f" ({r['status']})"))
    text = "\n".join(lines) + "\n"
    print(text)
    name = f"results-bigrows{'-' + args.tag if args.tag else ''}"
    with open(os.path.join(ROOT, "bench", name + ".txt"), "w") as f:
        f.write(text)
    with open(os.path.join(ROOT, "bench", name + ".json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
