"""Catch-up of a backlog with Firebird as source or destination (issue 19).

    python tests/live_servers.py run -- python bench/firebird_catchup.py [--events 20000]
        [--pairs firebird:postgresql,postgresql:firebird] [--profile]

For each pair: a backlog of ``--events`` row changes (60% INSERT, 30% UPDATE, 10% DELETE,
100 a transaction, 7-column table as in bench/run.py) is written through the source
engine's own SQL while no worker runs; then one ``pdr-reflect`` process (no options:
one pass until caught up) catches up, timed from its start to its exit; the tables are
compared row by row.  ``--profile``: a second backlog caught up in this process under
cProfile, and where the time goes: the statements that took the most time (timed on
every engine and thread, statement by statement) and the committing thread's functions
with the most own time.
"""
import argparse
import collections
import cProfile
import datetime as dt
import decimal
import io
import os
import pstats
import random
import re
import string
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DDL = {
    "postgresql": "CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL, name varchar(40), "
                  "score double precision, amount numeric(12,2), created timestamp, flag boolean)",
    "firebird": "CREATE TABLE t (id bigint NOT NULL PRIMARY KEY, n integer NOT NULL, name varchar(40), "
                "score double precision, amount numeric(12,2), created timestamp, flag boolean)",
}


def backlog(engine, events, seed, first_id=1):
    """``events`` row changes through SQLAlchemy Core (each engine's own SQL), 100 a
    transaction; returns (events, seconds)."""
    import sqlalchemy as sa

    rng = random.Random(seed)
    with engine.connect() as conn:
        t = sa.Table("t", sa.MetaData(), autoload_with=conn)
    live, next_id, written = [], first_id, 0
    started = time.perf_counter()
    while written < events:
        with engine.begin() as conn:
            rows = []
            for _ in range(60):
                rows.append({"id": next_id, "n": rng.randint(0, 10 ** 6),
                             "name": "".join(rng.choices(string.ascii_letters, k=rng.randint(8, 30))),
                             "score": rng.random() * 1000,
                             "amount": decimal.Decimal(rng.randint(0, 10 ** 8)) / 100,
                             "created": dt.datetime(2026, 1, rng.randint(1, 28), rng.randint(0, 23),
                                                    rng.randint(0, 59), rng.randint(0, 59),
                                                    rng.randint(0, 9999) * 100),
                             "flag": rng.random() < 0.5})
                live.append(next_id)
                next_id += 1
            conn.execute(t.insert(), rows)
            picks = rng.sample(range(len(live)), 40)
            upd = [live[i] for i in picks[:30]]
            conn.execute(t.update().where(t.c.id.in_(upd)).values(n=t.c.n + 1, score=t.c.score + 1,
                                                                   name="".join(rng.choices(string.ascii_letters,
                                                                                            k=12))))
            gone = sorted(picks[30:], reverse=True)
            conn.execute(t.delete().where(t.c.id.in_([live[i] for i in gone])))
            for i in gone:
                live[i] = live[-1]
                live.pop()
            written += 100
    return written, time.perf_counter() - started, next_id


def rows(engine):
    import sqlalchemy as sa

    with engine.connect() as conn:
        t = sa.Table("t", sa.MetaData(), autoload_with=conn)
        return [(r.id, r.n, r.name, r.score, r.amount, r.created, r.flag)
                for r in conn.execute(sa.select(t).order_by(t.c.id))]


def statement_timers():
    """Per-statement (count, seconds) on every SQLAlchemy engine of this process; returns
    the dict (cleared by the caller)."""
    import sqlalchemy as sa

    stats = collections.defaultdict(lambda: [0, 0.0])

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
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--pairs", default="firebird:postgresql,postgresql:firebird")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="pdr-fbbench-")
    django_db = os.path.join(workdir, "django.sqlite3")
    os.environ.update({"DJANGO_SETTINGS_MODULE": "tests.settings", "PDR_TEST_SQLITE_PATH": django_db})
    import django

    django.setup()
    from pathlib import Path

    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django_pdr.models import Reflection, SourceTable
    from tests.processes import django_env, run_worker_once
    from tests.targets import Target

    results = []
    timers = statement_timers() if args.profile else None
    for pair in args.pairs.split(","):
        source_kind, dest_kind = pair.split(":")
        source, dest = Target(source_kind, Path(workdir)), Target(dest_kind, Path(workdir))
        try:
            source.execute(DDL[source_kind])
            st = SourceTable(database=source.model(f"src-{pair}"), table="t")
            st.full_clean()
            st.save()
            st.install()
            Reflection.objects.create(source=st, destination=dest.model(f"dst-{pair}"), destination_table="t")
            env = django_env(django_db)
            if run_worker_once(env).returncode != 0:  # the (empty) initial load
                raise SystemExit("initial load failed")
            events, write_s, next_id = backlog(source.engine, args.events, args.seed)
            started = time.perf_counter()
            done = run_worker_once(env, timeout=3600)
            catchup_s = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            diffs = len(set(rows(source.engine)) ^ set(rows(dest.engine)))
            line = (f"{pair}: backlog of {events:,} events written in {write_s:.1f} s; caught up in "
                    f"{catchup_s:.1f} s ({events / catchup_s:,.0f} events/s, one process from start to exit); "
                    f"{diffs} differences")
            print(line, flush=True)
            results.append((pair, events, catchup_s, diffs))
            if args.profile:
                events2, _, _ = backlog(source.engine, args.events, args.seed + 1, first_id=next_id)
                timers.clear()
                profile = cProfile.Profile()
                started = time.perf_counter()
                profile.enable()
                call_command("pdr-reflect", verbosity=0)
                profile.disable()
                took = time.perf_counter() - started
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(14)
                print(f"{pair}, profiled in-process: {events2:,} events in {took:.1f} s (cProfile overhead "
                      f"included); statements by time:")
                for text, (count, seconds) in sorted(timers.items(), key=lambda kv: -kv[1][1])[:6]:
                    print(f"  {seconds:7.2f} s {count:6d}x  {text}")
                print("the committing thread's functions by own time:")
                print("\n".join(out.getvalue().splitlines()[:40]), flush=True)
        finally:
            Reflection.objects.update(active=False)
            source.drop()
            dest.drop()
    print("\n| pair | events | catch-up (s) | events/s | differences |")
    print("|---|---|---|---|---|")
    for pair, events, seconds, diffs in results:
        print(f"| {pair.replace(':', ' → ')} | {events:,} | {seconds:.1f} | {events / seconds:,.0f} | {diffs} |")
    if any(r[3] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
