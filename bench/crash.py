"""Long crash test: kill -9 the worker many times during catch-up with concurrent writers.

    python tests/live_servers.py run -- python bench/crash.py [--kills 50] [--pairs postgresql:postgresql,...]
    ... bench/crash.py --kills 25 --preload 300000 --resync-every 3   # kills during initial loads and resyncs

For each pair: a writer thread makes random inserts, updates, deletes and key
changes on the source while a `pdr-reflect -i 0.05` process is started and
SIGKILLed at random moments; then one clean pass runs and the destination is
compared with the source row by row.  Prints one line per pair and a Markdown
table for docs/reliability.md.
"""
import argparse
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--pairs", default="postgresql:postgresql,postgresql:mysql,mysql:postgresql,sqlite:postgresql")
    parser.add_argument("--min-run", type=float, default=0.8)
    parser.add_argument("--max-run", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--writer-batch", type=int, default=50, help="row changes per source transaction")
    parser.add_argument("--bulk", type=float, default=0.0,
                        help="share of source transactions that also change over 1,000 rows in one statement")
    parser.add_argument("--preload", type=int, default=0,
                        help="rows in the source table before its reflection exists: the first runs are killed "
                             "during its initial load")
    parser.add_argument("--resync-every", type=int, default=0,
                        help="request a resync after every N kills: later runs are killed while they reload "
                             "the destination (into a shadow table)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="pdr-crash-")
    django_db = os.path.join(workdir, "django.sqlite3")
    os.environ.update({"DJANGO_SETTINGS_MODULE": "tests.settings", "PDR_TEST_SQLITE_PATH": django_db})
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django_pdr.models import Reflection, SourceTable
    from tests.processes import Writer, django_env, kill_cycle, run_worker_once, table_rows
    from tests.targets import Target
    from pathlib import Path

    rng = random.Random(args.seed)
    results = []
    for pair in args.pairs.split(","):
        source_kind, dest_kind = pair.split(":")
        source, dest = Target(source_kind, Path(workdir)), Target(dest_kind, Path(workdir))
        try:
            source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(40), n int)")
            if args.preload:
                step = 5000
                for first in range(1, args.preload + 1, step):
                    last = min(first + step, args.preload + 1)
                    source.execute("INSERT INTO t (id, v, n) VALUES " + ", ".join(
                        f"({i}, 'pre-{i}', {i % 977})" for i in range(first, last)))
            st = SourceTable(database=source.model(f"src-{pair}"), table="t")
            st.full_clean()
            st.save()
            st.install()
            Reflection.objects.create(source=st, destination=dest.model(f"dst-{pair}"), destination_table="t",
                                      batch_size=2000)
            env = django_env(django_db)
            writer = Writer(source.engine, seed=rng.randrange(10 ** 6), batch=args.writer_batch, pause=0.0,
                            bulk=args.bulk, first_id=args.preload + 1)
            started = time.time()
            writer.start()
            in_load = []

            def resync(done, st=st):
                progress = Reflection.objects.filter(source=st).values_list("load_progress", flat=True).first()
                if (progress or {}).get("phase") == "load":
                    in_load.append(done)  # killed while it (re)loaded the destination
                if args.resync_every and done % args.resync_every == 0:
                    Reflection.objects.filter(source=st).update(resync_requested=True)

            kills = kill_cycle(env, args.kills, rng, args.min_run, args.max_run, between=resync)
            writer.stop()
            if writer.error:
                raise writer.error
            final = run_worker_once(env, timeout=1800)
            if final.returncode != 0:
                raise SystemExit(final.stderr)
            src_rows, dst_rows = table_rows(source.engine), table_rows(dest.engine)
            diffs = len(set(src_rows) ^ set(dst_rows))
            results.append((pair, kills, writer.changes, len(src_rows), diffs, time.time() - started))
            bulk = f" ({writer.bulk_statements} statements of over 1,000 rows)" if args.bulk else ""
            if args.preload or args.resync_every:
                bulk += f", {len(in_load)} kills during a load"
            print(f"{pair}: {kills} kills, {writer.changes} row changes (events){bulk}, {len(src_rows)} rows compared, "
                  f"{diffs} differences, {time.time() - started:.0f} s", flush=True)
        finally:
            Reflection.objects.update(active=False)  # its databases are dropped: not the next pair's business
            source.drop()
            dest.drop()
    print("\n| pair | kill -9 survived | events (row changes) | rows compared | differences |")
    print("|---|---|---|---|---|")
    for pair, kills, ops, compared, diffs, _ in results:
        print(f"| {pair.replace(':', ' → ')} | {kills} | {ops:,} | {compared:,} | {diffs} |")
    if any(r[4] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
