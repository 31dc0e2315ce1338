"""Why a PG→PG catch-up slows down as the destination grows, without django-pdr.

    python bench/dest_growth.py [--events 5000000] [--batch 20000] [--variants upsert,update,vacuum]

Starts its own PostgreSQL 15 (the server settings of bench/run.py: fsync on,
shared_buffers 512MB unless PDR_BENCH_PG_SHARED_BUFFERS) and replays, on a table
shaped like bench/run.py's ``t``, the destination's statements of a catch-up of the
same workload (60% INSERT / 30% UPDATE / 10% DELETE of random live rows), one
transaction per batch: COPY of the new rows straight into the table, COPY of the
updated rows into a temporary table then one set-based statement, one DELETE of
the deleted keys.  No source, no events, no Python beyond building the COPY text.

Variants of the statement for updated rows:
  upsert  INSERT ... SELECT ... ON CONFLICT DO UPDATE (what django-pdr runs)
  update  UPDATE ... FROM the temporary table
  vacuum  upsert, plus VACUUM of the table after every million events (outside the timing)

Prints, per million events, the seconds of each statement and of the whole million,
and the rate of the last million against the first.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from run import DDL, BenchPostgres, pg_admin, pg_connect  # noqa: E402

COLS = "id, n, name, score, amount, created, flag"
SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLS.split(", ")[1:])
SET_FROM = ", ".join(f"{c} = s.{c}" for c in COLS.split(", ")[1:])


def replay(conn, variant, events, batch, seed=2026):
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS t")
    cur.execute(DDL["postgresql"])
    conn.commit()
    rng = random.Random(seed)

    def line(i):
        return (f"{i}\t{rng.randint(0, 10 ** 6)}\t{'x' * rng.randint(8, 30)}\t{rng.random() * 1000:.6f}\t"
                f"{rng.randint(0, 10 ** 8) / 100:.2f}\t2026-01-05 10:11:12.123456\t{'t' if rng.random() < .5 else 'f'}\n")

    n_ins, n_upd = int(batch * 0.6), int(batch * 0.3)
    n_del = batch - n_ins - n_upd
    live, next_id, done = [], 1, 0
    steps = {"copy new": 0.0, "updated rows": 0.0, "delete": 0.0}
    started, rows = time.perf_counter(), []
    while done < events:
        new = []
        for _ in range(n_ins):
            new.append(line(next_id))
            live.append(next_id)
            next_id += 1
        picks = rng.sample(range(len(live)), n_upd + n_del)
        upd = sorted({live[i] for i in picks[:n_upd]})
        gone_idx = sorted(picks[n_upd:], reverse=True)
        gone = [live[i] for i in gone_idx]
        for i in gone_idx:
            live[i] = live[-1]
            live.pop()
        upd_text = "".join(line(k) for k in upd)
        t0 = time.perf_counter()
        cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        cur.copy_expert(f"COPY t ({COLS}) FROM STDIN", io.StringIO("".join(new)))
        t1 = time.perf_counter()
        cur.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS st ON COMMIT DROP AS SELECT {COLS} FROM t WITH NO DATA")
        cur.copy_expert(f"COPY st ({COLS}) FROM STDIN", io.StringIO(upd_text))
        if variant == "update":
            cur.execute(f"UPDATE t SET {SET_FROM} FROM st AS s WHERE t.id = s.id")
        else:
            cur.execute(f"INSERT INTO t ({COLS}) SELECT {COLS} FROM st ON CONFLICT (id) DO UPDATE SET {SET}")
        if cur.rowcount != len(upd):
            raise SystemExit(f"{variant}: {cur.rowcount} rows updated, {len(upd)} expected")
        t2 = time.perf_counter()
        cur.execute("DELETE FROM t WHERE id = ANY(%s)", (gone,))
        conn.commit()
        t3 = time.perf_counter()
        steps["copy new"] += t1 - t0
        steps["updated rows"] += t2 - t1
        steps["delete"] += t3 - t2
        done += batch
        if done % 1_000_000 == 0:
            total = sum(steps.values())
            rows.append(total)
            print(f"{variant:7} million {done // 1_000_000}: {total:5.2f} s ({1_000_000 / total:,.0f} events/s)  "
                  + "  ".join(f"{k} {v:.2f}" for k, v in steps.items()), flush=True)
            steps = dict.fromkeys(steps, 0.0)
            if variant == "vacuum":
                conn.autocommit = True
                cur.execute("VACUUM t")
                conn.autocommit = False
    cur.execute("SELECT pg_size_pretty(pg_table_size('t')), pg_size_pretty(pg_indexes_size('t')), "
                "n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 't'")
    heap, index, n_live, n_dead = cur.fetchone()
    conn.commit()
    print(f"{variant:7} last million against the first: {rows[0] / rows[-1]:.2f}x the rate; table {heap}, "
          f"index {index}, {n_live:,} live / {n_dead:,} dead tuples (statistics); "
          f"wall {time.perf_counter() - started:.0f} s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--variants", default="upsert,update,vacuum")
    args = parser.parse_args()
    server = BenchPostgres()
    server.label = "postgresql (destination growth)"
    server.start()
    try:
        pg_admin(server, 'CREATE DATABASE "dst"')
        conn = pg_connect(server, "dst")
        for variant in args.variants.split(","):
            replay(conn, variant, args.events, args.batch)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
