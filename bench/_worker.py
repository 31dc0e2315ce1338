"""Timed worker process for bench/run.py (not a user command).

    python bench/_worker.py --reflection ID [--profile FILE]

Configures Django from the environment (tests.settings, PDR_TEST_SQLITE_PATH),
then calls ``django_pdr.worker.run_round`` for the reflection until a round
applies nothing (caught up) -- the same loop ``pdr-reflect -i`` runs, without
its sleeps.  Prints one JSON line: events, rows, seconds (wall time of the
loop, interpreter and Django start-up excluded), seconds spent purging applied
events, time per phase (coarse wrappers around the library's methods), RSS at
start and peak RSS of this process (``VmHWM``; see the note at its reading).
With ``--profile``: cProfile of the loop (the committing thread) into FILE, and the
statements that took the most time (timed on every engine and thread, statement by
statement: the reading threads' work too) as "statements" in the JSON line.
"""
import argparse
import json
import os
import re
import resource
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PHASES = defaultdict(float)
CALLS = defaultdict(int)


def _rss_mb(field="VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _timed(owner, name, label):
    """Wrap ``owner.name`` to add its wall time to PHASES[label] (skipped if the library renamed it)."""
    original = getattr(owner, name, None)
    if original is None:
        return

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES[label] += time.perf_counter() - t0
            CALLS[label] += 1

    setattr(owner, name, wrapper)


def statement_timers():
    """Per-statement [count, seconds] on every SQLAlchemy engine of this process, any thread."""
    import sqlalchemy as sa

    stats = defaultdict(lambda: [0, 0.0])

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info["pdr_bench_t0"] = time.perf_counter()

    @sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        started = conn.info.pop("pdr_bench_t0", None)
        if started is not None:
            text = re.sub(r"\s+", " ", statement)[:110]
            entry = stats[f"{conn.dialect.name}: {text}"]
            entry[0] += 1
            entry[1] += time.perf_counter() - started

    return stats


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reflection", type=int, required=True)
    parser.add_argument("--profile", help="write cProfile stats of the loop to this file")
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args()

    import django

    django.setup()
    if os.environ.get("PDR_BENCH_HOOK"):  # a Python file run here first: instrumentation of an experiment
        exec(open(os.environ["PDR_BENCH_HOOK"]).read(), {})
    from django_pdr import worker
    from django_pdr.engine import runner as reflect
    from django_pdr.engine import visibility
    from django_pdr.models import Reflection

    # Coarse phase timers.  Nested calls are counted in both (e.g. _apply is inside _commit).
    _timed(reflect.ReflectionRunner, "prepare", "prepare (reflect tables, capture plan)")
    _timed(visibility.EventReader, "read", "read events (source)")
    _timed(reflect.ReflectionRunner, "_source_rows", "read source rows (source)")
    _timed(reflect.ReflectionRunner, "_dest_rows", "transform + convert rows (Python)")
    _timed(reflect.ReflectionRunner, "_commit", "destination transaction (fence+apply+checkpoint+commit)")
    _timed(reflect.ReflectionRunner, "_apply", "  of which delete + upsert statements")
    _timed(reflect.ReflectionRunner, "_save_progress", "Django progress writes (per batch)")
    _timed(reflect.ReflectionRunner, "load_chunk_once", "initial-load chunks (read+write)")
    _timed(worker, "purge", "purge applied events (source)")
    _timed(reflect, "measure", "measure lag (end of pass)")
    _timed(reflect, "record_sample", "record sample (end of pass)")

    reflection = Reflection.objects.get(pk=args.reflection)
    before_events = reflection.events_applied
    rss_start = _rss_mb()
    profiler = statements = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        statements = statement_timers()
    trace = os.environ.get("PDR_BENCH_TRACEMALLOC")  # file: where to write the top allocation growth
    if trace:
        import tracemalloc

        tracemalloc.start(12)
        snap0 = tracemalloc.take_snapshot()
    events = rows = rounds = 0
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    while True:
        result = worker.run_round(ids=[args.reflection])
        rounds += 1
        if result.failed:
            print(json.dumps({"error": result.failed[0][1]}), flush=True)
            sys.exit(1)
        events += result.events
        rows += result.rows
        if result.events == 0:
            phase = (Reflection.objects.filter(pk=args.reflection).values_list("load_progress", flat=True)
                     .first() or {}).get("phase")
            if phase != "load":
                break  # a pass that applied nothing outside the initial load: caught up
        if time.perf_counter() - t0 > args.max_seconds:
            break
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    seconds = time.perf_counter() - t0
    if trace:
        import gc

        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        with open(trace, "w") as f:
            f.write(f"traced memory now {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MB, "
                    f"peak {tracemalloc.get_traced_memory()[1] / 2**20:.1f} MB\n")
            for stat in snap1.compare_to(snap0, "traceback")[:8]:
                f.write(f"\n{stat}\n")
                for line in stat.traceback.format()[-16:]:
                    f.write(line + "\n")
    reflection.refresh_from_db()
    # The peak is VmHWM: the high-water mark of this process image.  ru_maxrss is not used:
    # Linux carries it across execve(), so it would include the RSS of the forked copy of
    # bench/run.py (which grows with the backlogs it generated) before this program ran.
    peak = _rss_mb("VmHWM")
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "events": events, "rows": rows, "rounds": rounds, "seconds": seconds,
        "purge_seconds": PHASES.get("purge applied events (source)", 0.0),
        "events_applied_delta": reflection.events_applied - before_events,
        "loaded": (reflection.load_progress or {}).get("loaded", 0),
        "status": reflection.status,
        "phases": dict(PHASES), "calls": dict(CALLS),
        "rss_start_mb": rss_start, "rss_peak_mb": peak, "ru_maxrss_mb": ru_maxrss,
        "statements": sorted(([text, count, secs] for text, (count, secs) in (statements or {}).items()),
                             key=lambda s: -s[2])[:12],
    }), flush=True)


if __name__ == "__main__":
    main()
