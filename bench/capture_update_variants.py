"""UPDATE capture variants on PostgreSQL, side by side: one-row UPDATE TPS and a bulk UPDATE.

    python tests/live_servers.py run --only pg -- python bench/capture_update_variants.py [REPS] [VARIANTS]

Like bench/capture_variants.py (fsync off: the trigger's CPU cost alone; 2 pgbench
clients, 4 s; medians of interleaved runs), for UPDATE triggers.  Variants: "except"
is the installed design (one statement-level trigger with both transition tables: old
keys EXCEPT new keys as 'D', UNION ALL the new keys as 'U'); "split" a statement-level
trigger on the new table only plus a row-level trigger WHEN the key changed (the old
key as 'D'); "new_only" the new keys alone (not a correct design: the floor);
"row_level" one FOR EACH ROW trigger.
"""
import statistics
import sys
import time

from capture_variants import connect, pgbench_tps  # bench/ is on sys.path when run as a script

SECURE = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
EV = "INSERT INTO public.ev (pdr_op, pdr_txid, pdr_k0) "
LOCK = "IF NOT pg_try_advisory_xact_lock_shared(1346654753, 0) THEN PERFORM pg_notify('pdr', ''); END IF;"
TX = "DECLARE x bigint := pg_current_xact_id()::text::bigint; BEGIN "


def variant_sql(v):
    if v == "none":
        return []
    if v == "except":
        body = (TX + EV + "SELECT 'D', x, o.id FROM (SELECT id FROM pdr_old EXCEPT SELECT id FROM pdr_new) AS o "
                "UNION ALL SELECT 'U', x, n.id FROM pdr_new AS n; " + LOCK + " RETURN NULL; END")
        return [f"CREATE FUNCTION fu() RETURNS trigger LANGUAGE plpgsql {SECURE} AS $$ {body} $$",
                "CREATE TRIGGER tu AFTER UPDATE ON t REFERENCING OLD TABLE AS pdr_old NEW TABLE AS pdr_new "
                "FOR EACH STATEMENT EXECUTE FUNCTION fu()"]
    if v == "split":
        body = TX + EV + "SELECT 'U', x, n.id FROM pdr_new AS n; " + LOCK + " RETURN NULL; END"
        row = "BEGIN " + EV + "VALUES ('D', pg_current_xact_id()::text::bigint, OLD.id); RETURN NULL; END"
        return [f"CREATE FUNCTION fu() RETURNS trigger LANGUAGE plpgsql {SECURE} AS $$ {body} $$",
                f"CREATE FUNCTION fk() RETURNS trigger LANGUAGE plpgsql {SECURE} AS $$ {row} $$",
                "CREATE TRIGGER tu AFTER UPDATE ON t REFERENCING NEW TABLE AS pdr_new "
                "FOR EACH STATEMENT EXECUTE FUNCTION fu()",
                "CREATE TRIGGER tk AFTER UPDATE ON t FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) "
                "EXECUTE FUNCTION fk()"]
    if v == "new_only":
        body = TX + EV + "SELECT 'U', x, n.id FROM pdr_new AS n; " + LOCK + " RETURN NULL; END"
        return [f"CREATE FUNCTION fu() RETURNS trigger LANGUAGE plpgsql {SECURE} AS $$ {body} $$",
                "CREATE TRIGGER tu AFTER UPDATE ON t REFERENCING NEW TABLE AS pdr_new "
                "FOR EACH STATEMENT EXECUTE FUNCTION fu()"]
    if v == "row_level":
        row = ("BEGIN IF OLD.id IS DISTINCT FROM NEW.id THEN " + EV +
               "VALUES ('D', pg_current_xact_id()::text::bigint, OLD.id); END IF; " + EV +
               "VALUES ('U', pg_current_xact_id()::text::bigint, NEW.id); " + LOCK + " RETURN NULL; END")
        return [f"CREATE FUNCTION fu() RETURNS trigger LANGUAGE plpgsql {SECURE} AS $$ {row} $$",
                "CREATE TRIGGER tu AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION fu()"]


def setup(cur, v):
    cur.execute("DROP TABLE IF EXISTS t CASCADE; DROP TABLE IF EXISTS ev; DROP FUNCTION IF EXISTS fu() CASCADE; "
                "DROP FUNCTION IF EXISTS fk() CASCADE")
    cur.execute("CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL, name varchar(40), score double precision, "
                "amount numeric(12,2), created timestamp, flag boolean)")
    cur.execute("INSERT INTO t SELECT g, g % 1000, 'name-' || g, g * 0.5, g * 0.01, now(), g % 2 = 0 "
                "FROM generate_series(1, 200000) g")
    cur.execute("CREATE TABLE ev (pdr_id bigserial PRIMARY KEY, pdr_op varchar(1) NOT NULL, pdr_txid bigint, "
                "pdr_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'), pdr_k0 bigint)")
    for s in variant_sql(v):
        cur.execute(s)
    cur.execute("VACUUM ANALYZE t")


def main():
    cur = connect().cursor()
    with open("/tmp/cvu.sql", "w") as f:
        f.write("\\set id random(1, 200000)\nUPDATE t SET n = n + 1 WHERE id = :id;\n")
    variants = sys.argv[2].split(",") if len(sys.argv) > 2 else ["none", "except", "split", "new_only", "row_level"]
    tps, bulk = {}, {}
    for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        for v in variants:
            setup(cur, v)
            cur.execute("CHECKPOINT")
            t0 = time.perf_counter()
            cur.execute("UPDATE t SET n = n + 1")
            bulk.setdefault(v, []).append(time.perf_counter() - t0)
            setup(cur, v)
            tps.setdefault(v, []).append(pgbench_tps("/tmp/cvu.sql"))
    bb, bt = statistics.median(bulk["none"]), statistics.median(tps["none"])
    for v in variants:
        b, t = statistics.median(bulk[v]), statistics.median(tps[v])
        print(f"{v:10} bulk {b:.3f}s {b / bb:.2f}x  one-row {t:,.0f} TPS  +{(2 / t - 2 / bt) * 1e6:.1f} us/tx")


if __name__ == "__main__":
    main()
