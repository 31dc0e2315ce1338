"""Capture-trigger variants on PostgreSQL, side by side: what each design costs a writer.

    python tests/live_servers.py run --only pg -- python bench/capture_variants.py [--reps 7]

Uses the throwaway server of tests/live_servers.py (fsync off: the CPU cost of the
trigger alone, without the commit flush that dominates durable transactions).  For each
variant it times an INSERT ... SELECT of 200,000 rows and runs pgbench (2 clients, 4 s)
of one-row INSERT transactions, interleaving the variants in every repetition; prints
medians and the ratio to no trigger.  An exploration tool (docs/performance.md quotes
it): the installed capture is rendered by django_pdr/dialects/postgresql.py.

Variants: "installed" is the installed design (statement-level trigger with a
transition table, one event row per key, SECURITY DEFINER with a fixed search_path,
pg_notify only while a worker holds the sleep lock; none does here); "notify_always"
the design before (pg_notify in every statement); "asleep" the installed design with a
worker asleep throughout (every statement notifies); "quiet" without pg_notify
(PDR["NOTIFY"] = False); "flag" notifies when a one-row table says a worker sleeps;
"no_definer" notify_always without SECURITY DEFINER and its SET; "row_level" a FOR
EACH ROW trigger; "array" one event row per statement holding an array of the keys;
"array_1000" arrays of at most 1,000 keys; "hybrid_1000"/"hybrid_10000" row events below
that many rows (a count query decides), arrays from there; "hybrid_limit" row events for
the first 1,000 keys (LIMIT), arrays for the rest (OFFSET): the design installed since
46f42cd; "_noset" without the function's SET search_path; "transition_only" a trigger
that only has the transition table; "no_event_pk" the installed design on an event table
without its primary key (to see the index's share).
"""
import argparse
import os
import re
import statistics
import subprocess
import time

import psycopg2

TABLE = ("CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL, name varchar(40), score double precision, "
         "amount numeric(12,2), created timestamp, flag boolean)")
SECURE = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
FUNCTION = "CREATE FUNCTION fn() RETURNS trigger LANGUAGE plpgsql {security} AS $$ {body} $$"
TXID = "pg_catalog.pg_current_xact_id()::pg_catalog.text::bigint"
NOTIFY = "PERFORM pg_catalog.pg_notify('pdr', '');"
STATEMENT = "CREATE TRIGGER tr AFTER INSERT ON t REFERENCING NEW TABLE AS pdr_new FOR EACH STATEMENT EXECUTE FUNCTION fn()"
ROW = "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION fn()"
SCALAR_EVENTS = ("CREATE TABLE ev (pdr_id bigserial PRIMARY KEY, pdr_op varchar(1) NOT NULL, pdr_txid bigint, "
                 "pdr_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'), pdr_k0 bigint)")
ARRAY_EVENTS = SCALAR_EVENTS.replace("pdr_k0 bigint)", "pdr_k0 bigint[])")
HYBRID_EVENTS = (SCALAR_EVENTS.replace("pdr_k0 bigint)", "pdr_k0 bigint, pdr_a0 bigint[]); ")
                 + "CREATE INDEX ev_bulk ON ev (pdr_id) WHERE pdr_a0 IS NOT NULL")


WAKE = "CREATE TABLE IF NOT EXISTS public.wake (worker text PRIMARY KEY, asleep boolean NOT NULL)"
CHECKS = {
    True: NOTIFY,
    False: "",
    "lock": f"IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1346654753, 0) THEN {NOTIFY} END IF;",
    "flag": f"IF EXISTS (SELECT FROM public.wake WHERE asleep) THEN {NOTIFY} END IF;",
}


def hybrid_body(chunk):
    """Row events below ``chunk`` rows; arrays of at most ``chunk`` keys from there."""
    return (f"DECLARE x bigint := {TXID}; pdr_rows bigint; BEGIN "
            f"SELECT count(*) INTO pdr_rows FROM (SELECT FROM pdr_new LIMIT {chunk}) s; "
            f"IF pdr_rows < {chunk} THEN {ROWS}; ELSE "
            "INSERT INTO public.ev (pdr_op, pdr_txid, pdr_a0) SELECT 'I', x, array_agg(id) "
            f"FROM (SELECT id, (row_number() OVER ()) / {chunk} AS g FROM pdr_new) s GROUP BY g; END IF; "
            f"{CHECKS['lock']} RETURN NULL; END")


def hybrid_limit_body(chunk):
    """Row events for the first ``chunk`` rows (one statement for small changes), arrays of
    at most ``chunk`` keys for the rest."""
    return (f"DECLARE x bigint := {TXID}; pdr_rows bigint; BEGIN "
            f"{ROWS} LIMIT {chunk}; GET DIAGNOSTICS pdr_rows = ROW_COUNT; "
            f"IF pdr_rows OPERATOR(pg_catalog.>=) {chunk} THEN "
            "INSERT INTO public.ev (pdr_op, pdr_txid, pdr_a0) "
            f"SELECT 'I', x, a[i:i OPERATOR(pg_catalog.+) {chunk - 1}] FROM (SELECT pg_catalog.array_agg(id) a "
            f"FROM (SELECT id FROM pdr_new OFFSET {chunk}) o) s, "
            f"pg_catalog.generate_series(1, pg_catalog.cardinality(a), {chunk}) i; END IF; "
            f"{CHECKS['lock']} RETURN NULL; END")


def statement_body(insert, notify=True):
    return f"DECLARE x bigint := {TXID}; BEGIN {insert}; {CHECKS[notify]} RETURN NULL; END"


ROWS = "INSERT INTO public.ev (pdr_op, pdr_txid, pdr_k0) SELECT 'I', x, n.id FROM pdr_new n"
VARIANTS = {
    "none": None,
    "installed": (SCALAR_EVENTS, SECURE, statement_body(ROWS, "lock"), STATEMENT),
    "asleep": (SCALAR_EVENTS, SECURE, statement_body(ROWS, "lock"), STATEMENT),
    "notify_always": (SCALAR_EVENTS, SECURE, statement_body(ROWS), STATEMENT),
    "quiet": (SCALAR_EVENTS, SECURE, statement_body(ROWS, notify=False), STATEMENT),
    "flag": (SCALAR_EVENTS, SECURE, statement_body(ROWS, "flag"), STATEMENT),
    "no_definer": (SCALAR_EVENTS, "", statement_body(ROWS), STATEMENT),
    "row_level": (SCALAR_EVENTS, SECURE, "BEGIN INSERT INTO public.ev (pdr_op, pdr_txid, pdr_k0) "
                  f"VALUES ('I', {TXID}, NEW.id); {NOTIFY} RETURN NULL; END", ROW),
    "array": (ARRAY_EVENTS, SECURE, statement_body(
        "INSERT INTO public.ev (pdr_op, pdr_txid, pdr_k0) SELECT 'I', x, array_agg(id) FROM pdr_new"), STATEMENT),
    "array_1000": (ARRAY_EVENTS, SECURE, statement_body(
        "INSERT INTO public.ev (pdr_op, pdr_txid, pdr_k0) SELECT 'I', x, array_agg(id) "
        "FROM (SELECT id, (row_number() OVER ()) / 1000 AS g FROM pdr_new) s GROUP BY g"), STATEMENT),
    "transition_only": (SCALAR_EVENTS, SECURE, "BEGIN RETURN NULL; END", STATEMENT),
    "no_event_pk": (SCALAR_EVENTS.replace("bigserial PRIMARY KEY", "bigserial"), SECURE,
                    statement_body(ROWS, "lock"), STATEMENT),
    "no_set": (SCALAR_EVENTS, "SECURITY DEFINER", statement_body(ROWS, "lock"), STATEMENT),
    "hybrid_limit": (HYBRID_EVENTS, SECURE, hybrid_limit_body(1000), STATEMENT),
    "hybrid_limit_noset": (HYBRID_EVENTS, "SECURITY DEFINER", hybrid_limit_body(1000), STATEMENT),
    "hybrid_1000": (HYBRID_EVENTS, SECURE, hybrid_body(1000), STATEMENT),
    "hybrid_10000": (HYBRID_EVENTS, SECURE, hybrid_body(10000), STATEMENT),
}
BULK = ("INSERT INTO t SELECT g, g % 1000, 'name ' || g, g * 0.5, g % 10000 / 100.0, now(), g % 2 = 0 "
        "FROM generate_series(1, 200000) g")
ONE_ROW = ("\\set id random(1, 1000000000)\n"
           "INSERT INTO t VALUES (:id, 1, 'x', 0.5, 1.5, now(), true) ON CONFLICT DO NOTHING;\n")


def setup(cur, variant):
    cur.execute("DROP TABLE IF EXISTS t CASCADE; DROP TABLE IF EXISTS ev; DROP FUNCTION IF EXISTS fn() CASCADE")
    cur.execute(TABLE)
    spec = VARIANTS[variant]
    if spec is None:
        return
    events, security, body, trigger = spec
    cur.execute(events)
    cur.execute(WAKE)
    cur.execute(FUNCTION.format(security=security, body=body))
    cur.execute(trigger)


def connect():
    """An autocommit connection to the throwaway test server (tests/live_servers.py)."""
    env = os.environ
    conn = psycopg2.connect(host=env["PDR_TEST_PG_HOST"], port=env["PDR_TEST_PG_PORT"], user=env["PDR_TEST_PG_USER"],
                            password=env["PDR_TEST_PG_PASSWORD"], dbname=env["PDR_TEST_PG_DB"])
    conn.autocommit = True
    return conn


def pgbench_tps(script):
    """TPS of 2 pgbench clients running ``script`` (a file) for 4 s on the test server."""
    env = os.environ
    out = subprocess.run(["pgbench", "-n", "-c", "2", "-T", "4", "-f", script, "-h", env["PDR_TEST_PG_HOST"],
                          "-p", env["PDR_TEST_PG_PORT"], "-U", env["PDR_TEST_PG_USER"], env["PDR_TEST_PG_DB"]],
                         capture_output=True, text=True, env=dict(env, PGPASSWORD=env["PDR_TEST_PG_PASSWORD"]))
    return float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    cur = connect().cursor()
    script = "/tmp/pdr-capture-variants.sql"
    with open(script, "w") as f:
        f.write(ONE_ROW)
    variants = args.variants.split(",")
    bulk, tps = {}, {}
    sleeper = connect()
    sleeper.cursor().execute("LISTEN pdr")
    for _ in range(args.reps):
        for variant in variants:
            # a worker asleep holds the sleep lock (and drains nothing: a worst case)
            sleeper.cursor().execute(f"SELECT pg_advisory_{'' if variant == 'asleep' else 'un'}lock(1346654753, 0)")
            sleeper.notifies.clear()
            setup(cur, variant)
            cur.execute("CHECKPOINT")
            started = time.perf_counter()
            cur.execute(BULK)
            bulk.setdefault(variant, []).append(time.perf_counter() - started)
            setup(cur, variant)
            tps.setdefault(variant, []).append(pgbench_tps(script))
    sleeper.close()
    setup(cur, "none")
    base_bulk, base_tps = statistics.median(bulk["none"]), statistics.median(tps["none"])
    print(f"{'variant':12} {'200k INSERT…SELECT':>20} {'ratio':>6} {'one-row TPS':>12} {'µs/tx added':>12}")
    for variant in variants:
        b, t = statistics.median(bulk[variant]), statistics.median(tps[variant])
        added = (2 / t - 2 / base_tps) * 1e6  # 2 clients
        print(f"{variant:12} {b:>19.3f}s {b / base_bulk:>6.2f} {t:>12,.0f} {added:>12.1f}")


if __name__ == "__main__":
    main()
