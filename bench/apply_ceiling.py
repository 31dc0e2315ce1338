"""Apply-path ceilings on this machine: what each proposed change to the library could reach.

    /tmp/venv/bin/python bench/apply_ceiling.py [--rows 200000] [--batch 5000]

Starts its own PostgreSQL 15 (fsync on, as bench/run.py), builds a source table
``t`` of ROWS rows (7 columns, as bench/run.py) and an event table of ROWS
events (60/30/10 I/U/D keys), then times, per batch of BATCH keys committed one
transaction each, the pieces of the apply loop done different ways:

  read      A. events then source rows by key (what django-pdr does: 2 queries, SQLAlchemy rows -> dicts)
            B. one query: event table LEFT JOIN source on the key (DISTINCT ON key), raw psycopg2
  write     C. SQLAlchemy executemany of pg INSERT ... ON CONFLICT (what django-pdr does)
            D. psycopg2.extras.execute_values INSERT ... ON CONFLICT, page 1000
            E. COPY into a temp table + INSERT ... SELECT ... ON CONFLICT DO UPDATE

Prints rows/s for each (median of 3 passes over the data).
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from run import DDL, HOST, PASSWORD, USER, BenchPostgres, pg_admin, pg_connect  # noqa: E402

COLS = ["id", "n", "name", "score", "amount", "created", "flag"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    server = BenchPostgres()
    server.label = "postgresql (ceilings)"
    server.start()
    try:
        run(server, args.rows, args.batch)
    finally:
        server.stop()


def run(server, rows, batch):
    import psycopg2.extras
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql as pg

    pg_admin(server, 'CREATE DATABASE "src"', 'CREATE DATABASE "dst"')
    s = pg_connect(server, "src", autocommit=True)
    c = s.cursor()
    c.execute(DDL["postgresql"])
    c.execute(f"INSERT INTO t SELECT g, g % 1000, 'name-' || md5(g::text), g * 0.5, g * 0.01, now(), g % 2 = 0 "
              f"FROM generate_series(1, {rows}) g")
    # events: keys spread over 1.1 x rows so ~10% are deletes (row absent)
    c.execute("CREATE TABLE ev (pdr_id bigserial PRIMARY KEY, pdr_op char(1), pdr_k0 bigint)")
    c.execute(f"INSERT INTO ev (pdr_op, pdr_k0) SELECT 'U', (random() * {int(rows * 1.1)})::bigint + 1 "
              f"FROM generate_series(1, {rows})")
    c.execute("VACUUM ANALYZE")
    d = pg_connect(server, "dst", autocommit=True)
    d.cursor().execute(DDL["postgresql"])
    d.cursor().execute("VACUUM ANALYZE")

    url = sa.engine.URL.create("postgresql+psycopg2", username=USER, password=PASSWORD, host=HOST,
                               port=server.port, database="src")
    src_engine = sa.create_engine(url)
    dst_engine = sa.create_engine(url.set(database="dst"))
    md = sa.MetaData()
    with src_engine.connect() as conn:
        t_src = sa.Table("t", md, autoload_with=conn)
        ev = sa.Table("ev", md, autoload_with=conn)
    with dst_engine.connect() as conn:
        t_dst = sa.Table("t", sa.MetaData(), autoload_with=conn)

    results = {}

    def timed(label, fn, before=None):
        times = []
        for _ in range(3):
            if before:
                before()
            t0 = time.perf_counter()
            n = fn()
            times.append(time.perf_counter() - t0)
        results[label] = n / statistics.median(times)
        print(f"{label:80s} {results[label]:>10,.0f} rows/s  ({' / '.join(f'{x:.2f}' for x in times)} s)",
              flush=True)

    # --- reads -------------------------------------------------------------------------------
    def read_a():
        total = 0
        with src_engine.connect() as conn:
            last = 0
            while True:
                evs = conn.execute(sa.select(ev.c.pdr_id, ev.c.pdr_op, ev.c.pdr_k0).where(ev.c.pdr_id > last)
                                   .order_by(ev.c.pdr_id).limit(batch)).all()
                conn.rollback()
                if not evs:
                    break
                last = evs[-1][0]
                keys = list(dict.fromkeys((e[2],) for e in evs))
                found = {}
                for row in conn.execute(sa.select(t_src).where(t_src.c.id.in_([k[0] for k in keys]))).mappings():
                    found[(row["id"],)] = dict(row)
                conn.rollback()
                total += len(evs)
        return total

    def read_b():
        total = 0
        conn = pg_connect(server, "src")
        cur = conn.cursor()
        last = 0
        while True:
            cur.execute("SELECT e.last_id, e.n_events, t.* FROM ("
                        "  SELECT pdr_k0, max(pdr_id) AS last_id, count(*) AS n_events FROM ("
                        "    SELECT pdr_id, pdr_k0 FROM ev WHERE pdr_id > %s ORDER BY pdr_id LIMIT %s) x"
                        "  GROUP BY pdr_k0) e LEFT JOIN t ON t.id = e.pdr_k0", (last, batch))
            got = cur.fetchall()
            conn.rollback()
            if not got:
                break
            last = max(r[0] for r in got)
            total += sum(r[1] for r in got)
        conn.close()
        return total

    timed("A. read events, then source rows by IN (SQLAlchemy, dict rows) [current]", read_a)
    timed("B. read events JOIN source rows in one query (psycopg2 tuples)", read_b)

    # --- writes ------------------------------------------------------------------------------
    with src_engine.connect() as conn:
        source_rows = [dict(r) for r in conn.execute(sa.select(t_src).order_by(t_src.c.id)).mappings()]

    def batches():
        for i in range(0, len(source_rows), batch):
            yield source_rows[i:i + batch]

    stmt = pg.insert(t_dst)
    upsert = stmt.on_conflict_do_update(index_elements=["id"], set_={n: stmt.excluded[n] for n in COLS[1:]})

    def write_c():
        with dst_engine.connect() as conn:
            for part in batches():
                with conn.begin():
                    conn.execute(upsert, part)
        return len(source_rows)

    upsert_returning = upsert.returning(t_dst.c.id)

    def write_c2():
        with dst_engine.connect() as conn:
            for part in batches():
                with conn.begin():
                    conn.execute(upsert_returning, part).all()
        return len(source_rows)

    sql_values = (f"INSERT INTO t ({', '.join(COLS)}) VALUES %s ON CONFLICT (id) DO UPDATE SET "
                  + ", ".join(f"{n} = EXCLUDED.{n}" for n in COLS[1:]))

    def write_d():
        conn = pg_connect(server, "dst")
        cur = conn.cursor()
        for part in batches():
            psycopg2.extras.execute_values(cur, sql_values, [tuple(r[n] for n in COLS) for r in part],
                                           page_size=1000)
            conn.commit()
        conn.close()
        return len(source_rows)

    def _copy_text(part):
        buf = io.StringIO()
        for r in part:
            buf.write("\t".join("\\N" if r[n] is None else str(r[n]) for n in COLS))
            buf.write("\n")
        buf.seek(0)
        return buf

    def write_e():
        conn = pg_connect(server, "dst")
        cur = conn.cursor()
        for part in batches():
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS pdr_stage (LIKE t) ON COMMIT DELETE ROWS")
            cur.copy_expert(f"COPY pdr_stage ({', '.join(COLS)}) FROM STDIN", _copy_text(part))
            cur.execute(f"INSERT INTO t SELECT * FROM pdr_stage ON CONFLICT (id) DO UPDATE SET "
                        + ", ".join(f"{n} = EXCLUDED.{n}" for n in COLS[1:]))
            conn.commit()
        conn.close()
        return len(source_rows)

    def truncate():
        d.cursor().execute("TRUNCATE t")

    for label, fn in (("C. SQLAlchemy executemany INSERT ... ON CONFLICT [current]", write_c),
                      ("C2. same + .returning(id): SQLAlchemy batches it again (insertmanyvalues)", write_c2),
                      ("D. psycopg2 execute_values INSERT ... ON CONFLICT (page 1000)", write_d),
                      ("E. COPY into temp table + INSERT ... SELECT ON CONFLICT", write_e)):
        timed(label + " — inserts (empty table)", fn, before=truncate)
        timed(label + " — updates (all rows exist)", fn)
    src_engine.dispose()
    dst_engine.dispose()
    s.close()
    d.close()


if __name__ == "__main__":
    main()
