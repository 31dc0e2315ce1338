"""A live demo of django-pdr that needs nothing but Python: SQLite → two SQLite mirrors.

    python -m django_pdr.demo [--dir DIR] [--rows N] [--keep] [-v]

No Django project is needed: the demo configures Django itself (its own SQLite
database for the app's models), creates a source SQLite database with an
``orders`` table (composite key, non-ASCII text and emoji, numeric, timestamp,
NULLs), installs capture triggers on it and replicates it into two destination
SQLite files with the worker running live in a background thread, while this
process writes to the source in rounds.  After each round it waits until both
destinations hold exactly the source's rows and prints how long that took.

Exit status: 0 when both destinations are identical to the source at the end,
1 when one differs (or replication stalls), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import datetime as dt
import decimal
import hashlib
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import unicodedata

import sqlalchemy as sa

from .errors import PdrError

TABLE = "orders"
MIRROR = "orders_mirror"
KEY = ("region", "order_no")
FILES = {
    "django": "django.sqlite3",
    "source": "source.sqlite3",
    "dest1": "destination-1.sqlite3",
    "dest2": "destination-2.sqlite3",
}
#: Present in a directory the demo created; lets a later run with the same --dir replace its files.
MARKER = ".pdr-demo"
WORKER_INTERVAL = 0.2

CREATE_SOURCE = f"""
CREATE TABLE {TABLE} (
    region     TEXT NOT NULL,
    order_no   INTEGER NOT NULL,
    customer   TEXT,
    amount     NUMERIC(12, 2),
    placed_at  TIMESTAMP,
    note       TEXT,
    PRIMARY KEY (region, order_no)
)"""

REGIONS = ["Cairo", "São Paulo", "Zürich", "東京"]
CUSTOMERS = ["Nour El-Sherif", "João Gonçalves", "Zoë Müller", "山田 太郎", "Ελένη Παππά",
             "Ørsted ApS", "Łukasz Wróbel", "Café Noir", "Åsa Öberg", "Иван Петров"]
NOTES = [None, "☕ coffee beans", "gift wrap 🎁", "express 🚚", "naïve façade", "2 × 🍮",
         None, "call first ☎", "fragile 📦", "déjà vu"]
SEED = [
    ("Cairo", 1, "Nour El-Sherif", "149.90", dt.datetime(2024, 3, 1, 9, 15), "☕ coffee beans, 2 kg"),
    ("Cairo", 2, "Ελένη Παππά", None, None, "price on request"),
    ("São Paulo", 1, "João Gonçalves", "1299.00", dt.datetime(2024, 3, 2, 14, 0), None),
    ("Zürich", 1, "Zoë Müller", "0.05", dt.datetime(2024, 3, 3, 23, 59, 59), "smallest order ever 🎉"),
    ("東京", 1, "山田 太郎", "98765.43", dt.datetime(2024, 3, 4, 8, 30), "速達 🚚"),
]


# -- terminal output ------------------------------------------------------------

def say(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal (CJK and emoji are two columns wide)."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def clip(text: str, width: int) -> str:
    if display_width(text) <= width:
        return text
    out = ""
    for ch in text:
        if display_width(out + ch) > width - 1:
            break
        out += ch
    return out + "…"


def pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def table_lines(columns, rows, max_width=22):
    texts = [[clip(cell(v), max_width) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], (int, float, decimal.Decimal)) or r[i] is None for r in rows)
               for i in range(len(columns))]
    widths = [max([display_width(c)] + [display_width(t[i]) for t in texts]) for i, c in enumerate(columns)]
    lines = ["  ".join(pad(c, w, n) for c, w, n in zip(columns, widths, numeric)).rstrip(),
             "  ".join("─" * w for w in widths)]
    for t in texts:
        lines.append("  ".join(pad(v, w, n) for v, w, n in zip(t, widths, numeric)).rstrip())
    return lines


# -- Django ---------------------------------------------------------------------

def configure_django(directory: str) -> None:
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-pdr-demo-not-secret",
        PGCRYPTO_DEFAULT_KEY="django-pdr-demo-credential-key",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django_ace",
            "django_pdr",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {"context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]},
        }],
        DATABASES={"default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(directory, FILES["django"]),
            "OPTIONS": {"timeout": 30},
        }},
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def configure_logging(verbosity: int) -> None:
    logger = logging.getLogger("django_pdr")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("   %(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity == 1 else logging.WARNING)
    logger.propagate = False


# -- databases ------------------------------------------------------------------

def sqlite_engine(path: str) -> sa.Engine:
    return sa.create_engine(sa.engine.URL.create("sqlite+pysqlite", database=path),
                            connect_args={"timeout": 30})


def read_rows(engine: sa.Engine, table_name: str):
    """Every row of ``table_name`` ordered by key, as tuples (None: no such table yet)."""
    with engine.connect() as conn:
        try:
            table = sa.Table(table_name, sa.MetaData(), autoload_with=conn)
        except sa.exc.NoSuchTableError:
            return None
        if not all(k in table.c for k in KEY):
            return None  # reflected while the worker was creating it (SQLite reflects in several reads)
        key = [table.c[k] for k in KEY]
        return [tuple(r) for r in conn.execute(sa.select(table).order_by(*key))]


def checksum(rows) -> str:
    return hashlib.sha256(repr(rows).encode("utf-8")).hexdigest()[:12]


class Demo:
    def __init__(self, directory: str, rows: int, timeout: float):
        self.directory = directory
        self.rows = rows
        self.timeout = timeout
        #: about ten insert transactions, committed while the worker runs
        self.insert_chunk = max(10, -(-rows // 10))
        self.paths = {k: os.path.join(directory, v) for k, v in FILES.items()}
        self.worker_error: BaseException | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    # -- set-up ----------------------------------------------------------------
    def create_source(self):
        self.source = sqlite_engine(self.paths["source"])
        with self.source.begin() as conn:
            conn.exec_driver_sql(CREATE_SOURCE)
            self.orders = sa.Table(TABLE, sa.MetaData(), autoload_with=conn)
            conn.execute(sa.insert(self.orders), [dict(zip(self.columns(), r)) for r in self.seed_rows()])
        self.dests = [sqlite_engine(self.paths["dest1"]), sqlite_engine(self.paths["dest2"])]

    def columns(self):
        return ["region", "order_no", "customer", "amount", "placed_at", "note"]

    def seed_rows(self):
        return [(r, n, c, decimal.Decimal(a) if a else None, p, note) for r, n, c, a, p, note in SEED]

    def configure_replication(self):
        from django_pdr.models import Database, Reflection, SourceTable

        source_db = Database(name="demo source", kind="sqlite", database=self.paths["source"])
        source_db.full_clean()
        source_db.save()
        st = SourceTable(database=source_db, table=TABLE)
        st.full_clean()  # discovers the primary key from the live table
        st.save()
        st.install()
        self.source_table = st
        self.reflections = []
        for i, key in enumerate(("dest1", "dest2"), start=1):
            db = Database(name=f"demo destination {i}", kind="sqlite", database=self.paths[key])
            db.full_clean()
            db.save()
            reflection = Reflection(source=st, destination=db, destination_table=MIRROR)
            reflection.full_clean()
            reflection.save()
            self.reflections.append(reflection)

    # -- the worker --------------------------------------------------------------
    def start_worker(self):
        def target():
            from django import db

            from django_pdr import worker

            try:
                worker.run(interval=WORKER_INTERVAL, stop_event=self.stop)
            except BaseException as exc:  # reported by the main thread
                self.worker_error = exc
                logging.getLogger("django_pdr.demo").exception("the worker stopped")
            finally:
                db.connections.close_all()

        self.thread = threading.Thread(target=target, name="pdr-worker", daemon=True)
        self.thread.start()

    def stop_worker(self, timeout=30.0):
        if self.thread is None:
            return True
        self.stop.set()
        self.thread.join(timeout=timeout)
        stopped = not self.thread.is_alive()
        self.thread = None
        return stopped

    # -- comparing ---------------------------------------------------------------
    def wait_replicated(self, started: float) -> tuple[bool, str]:
        """Poll until both destinations equal the source: (ok, what happened)."""
        expected = read_rows(self.source, TABLE)
        deadline = started + self.timeout
        pending = set(range(len(self.dests)))
        while True:
            checked = time.monotonic()
            for i in sorted(pending):
                if read_rows(self.dests[i], MIRROR) == expected:
                    pending.discard(i)
            checked = time.monotonic() - checked
            if not pending:
                return True, f"✓ both equal after {time.monotonic() - started:.2f} s"
            if self.worker_error is not None or time.monotonic() > deadline:
                names = " and ".join(f"destination {i + 1}" for i in sorted(pending))
                why = (f"the worker stopped: {self.worker_error}" if self.worker_error is not None
                       else f"still not equal to the source after {self.timeout:g} s")
                return False, f"✗\n   {names}: {why}" + "".join(
                    f"\n   {line}" for line in self.reflection_errors())
            # comparing big tables takes time (and the GIL) from the worker: poll less often then
            time.sleep(max(0.02, checked))

    def reflection_errors(self):
        from django_pdr.models import Reflection

        return [f"reflection {r.pk} ({r.status}): {r.last_error}"
                for r in Reflection.objects.filter(pk__in=[r.pk for r in self.reflections]).order_by("id")
                if r.last_error]

    # -- the rounds ----------------------------------------------------------------
    def write(self, statements, per_transaction=False):
        """Run (sql, params) pairs on the source; return rows affected."""
        count = 0
        with self.source.connect() as conn:
            if not per_transaction:
                with conn.begin():
                    for sql, params in statements:
                        count += conn.execute(sa.text(sql), params or {}).rowcount
            else:
                for sql, params in statements:
                    with conn.begin():
                        count += conn.execute(sa.text(sql), params or {}).rowcount
        return count

    def generated_rows(self):
        rng = random.Random(2024)
        base = dt.datetime(2024, 4, 1, 8, 0)
        out = []
        for i in range(self.rows):
            amount = decimal.Decimal(rng.randrange(100, 2_000_000)) / 100
            out.append({
                "region": REGIONS[i % len(REGIONS)],
                "order_no": 1000 + i,
                "customer": CUSTOMERS[rng.randrange(len(CUSTOMERS))],
                "amount": None if i % 17 == 5 else amount,
                "placed_at": base + dt.timedelta(minutes=97 * i, seconds=rng.randrange(60)),
                "note": NOTES[i % len(NOTES)],
            })
        return out

    def rounds(self):
        """(label, callable) pairs; each callable writes to the source."""
        def insert():
            rows = self.generated_rows()
            with self.source.connect() as conn:
                for start in range(0, len(rows), self.insert_chunk):
                    with conn.begin():
                        conn.execute(sa.insert(self.orders), rows[start:start + self.insert_chunk])
            return len(rows)

        def update():
            return self.write([
                ("UPDATE orders SET amount = round(amount * 1.1, 2), "
                 "note = coalesce(note || ' ', '') || '✅ +10%' WHERE region = :r", {"r": "Zürich"}),
                # a key change: the mirror must drop the old key and gain the new one
                ("UPDATE orders SET region = 'Cairo', order_no = 500 "
                 "WHERE region = '東京' AND order_no = 1", None),
            ])

        def delete():
            return self.write([
                ("DELETE FROM orders WHERE order_no % 7 = 0", None),
                # inserted and deleted in one transaction: the mirrors never see it
                ("INSERT INTO orders (region, order_no, customer) VALUES ('Cairo', 999, 'ephemeral 👻')",
                 None),
                ("DELETE FROM orders WHERE region = 'Cairo' AND order_no = 999", None),
            ])

        def nulls():
            return self.write([
                ("UPDATE orders SET note = NULL, placed_at = NULL "
                 "WHERE region = 'São Paulo' AND order_no % 3 = 0", None),
                ("UPDATE orders SET amount = NULL WHERE region = '東京' AND order_no % 4 = 0", None),
                ("UPDATE orders SET amount = 42.00, note = 'priced 💶' "
                 "WHERE region = 'Cairo' AND amount IS NULL", None),
            ], per_transaction=True)

        return [
            (f"INSERT {self.rows} rows, {self.insert_chunk} per transaction", insert),
            ("UPDATE Zürich amounts +10%; key 東京/1 → Cairo/500", update),
            ("DELETE every 7th order; INSERT+DELETE in one transaction", delete),
            ("set NULLs in São Paulo and 東京; NULL → 42.00 in Cairo", nulls),
        ]

    # -- summary ---------------------------------------------------------------
    def summary(self) -> bool:
        source_rows = read_rows(self.source, TABLE)
        say()
        say("3. Result")
        say(f"   source:        {len(source_rows)} rows (checksum {checksum(source_rows)})")
        ok = True
        first_dest = shown = None  # the sample shows the first differing destination, else the first
        for i, engine in enumerate(self.dests, start=1):
            rows = read_rows(engine, MIRROR)
            if i == 1:
                first_dest = rows
            if rows == source_rows:
                say(f"   destination {i}: {len(rows)} rows, identical to the source ✓ "
                    f"(checksum {checksum(rows)})")
                continue
            ok = False
            if rows is None:
                say(f"   destination {i}: table {MIRROR} does not exist ✗")
                continue
            missing = sorted(set(source_rows) - set(rows), key=repr)
            extra = sorted(set(rows) - set(source_rows), key=repr)
            say(f"   destination {i}: {len(rows)} rows, DIFFERS from the source ✗ "
                f"({len(missing)} source rows missing or different, {len(extra)} extra; "
                f"checksum {checksum(rows)})")
            for what, sample in (("only in the source:", missing[:3]),
                                 (f"only in destination {i}:", extra[:3])):
                for row in sample:
                    say(f"      {what} {tuple(cell(v) for v in row)}")
            if shown is None:
                shown = (i, rows)
        if shown is None:
            shown = (1, first_dest)
        self.print_sample(f"source table {TABLE}", source_rows)
        if shown[1] is not None:
            self.print_sample(f"destination {shown[0]} table {MIRROR}", shown[1])
        return ok

    def print_sample(self, title, rows, per_region=2):
        sample, seen = [], {}
        for row in rows:
            seen[row[0]] = seen.get(row[0], 0) + 1
            if seen[row[0]] <= per_region:
                sample.append(row)
        say()
        say(f"   {title}: first {per_region} rows of each region (of {len(rows)} rows)")
        for line in table_lines(self.columns(), sample):
            say("     " + line)


def prepare_directory(path: str | None):
    """(directory, is_temporary): a fresh temp dir, or ``path`` emptied of an earlier demo's files."""
    if path is None:
        return tempfile.mkdtemp(prefix="pdr-demo-"), True
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    ours = [f for name in FILES.values() for f in (name, name + "-journal", name + "-wal", name + "-shm")]
    present = [f for f in ours if os.path.exists(os.path.join(path, f))]
    if present and not os.path.exists(os.path.join(path, MARKER)):
        raise SystemExit(f"demo: {path} already holds {', '.join(present)} (not from an earlier demo); "
                         f"choose another --dir.")
    for f in present:
        os.remove(os.path.join(path, f))
    with open(os.path.join(path, MARKER), "w") as marker:
        marker.write("Files of `python -m django_pdr.demo`; a later run with this --dir replaces them.\n")
    return path, False


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m django_pdr.demo",
        description="Live django-pdr demo: replicate a SQLite table into two SQLite mirrors while "
                    "writing to it, then check the mirrors are identical. Needs nothing but Python.")
    parser.add_argument("--dir", metavar="DIR",
                        help="put the demo's SQLite files here and keep them (default: a temporary "
                             "directory, deleted at exit)")
    parser.add_argument("--rows", type=int, default=100, metavar="N",
                        help="rows to insert in the first round (default: 100)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="how long to wait for the mirrors after each round "
                             "(default: 10, plus 1 per 1000 rows)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show the worker's log (-v: INFO, -vv: DEBUG)")
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error("--rows must be 0 or more")
    if args.timeout is None:
        args.timeout = 10.0 + args.rows // 1000
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")  # a non-UTF-8 terminal gets '?' rather than a crash
        except (AttributeError, ValueError):
            pass
    configure_logging(args.verbose)

    directory, temporary = prepare_directory(args.dir)
    keep = args.keep or not temporary
    started = time.monotonic()
    demo = None
    ok = interrupted = False
    problems = []
    try:
        say("django-pdr live demo: one SQLite table replicated into two SQLite mirrors")
        say(f"   files in {directory}")
        say()
        say("1. Setting up")
        configure_django(directory)
        say(f"   Django app database      {FILES['django']} (migrated)")
        demo = Demo(directory, args.rows, args.timeout)
        demo.create_source()
        say(f"   source                   {FILES['source']}: table {TABLE}, key ({', '.join(KEY)}), "
            f"{len(SEED)} rows")
        demo.configure_replication()
        say(f"   capture installed        3 triggers on {TABLE} → event table "
            f"{demo.source_table.event_table}")
        for i, r in enumerate(demo.reflections, start=1):
            say(f"   reflection {i}             → {FILES['dest' + str(i)]}: table {MIRROR}")
        demo.start_worker()
        say(f"   worker                   running in a background thread "
            f"(idle poll every {WORKER_INTERVAL} s)")
        say()
        say("2. Writing to the source while the worker runs")
        rounds = [(f"the {len(SEED)} rows already there (initial copy)", lambda: len(SEED)),
                  *demo.rounds()]
        width = max(display_width(label) for label, _ in rounds)
        for number, (label, action) in enumerate(rounds):
            head = f"   round {number}  {pad(label, width)}  "
            if args.verbose:  # the worker's log goes between the lines
                say(head.rstrip())
            else:  # the line completes when the mirrors have caught up
                say(head, end="")
            t0 = time.monotonic()
            count = f"{action():>5} rows"
            ok, outcome = demo.wait_replicated(t0)
            if args.verbose:
                say(f"   round {number}: {count.strip()}; {outcome}")
            else:
                say(f"{count}  {outcome}")
            if not ok:
                break
        if not ok:
            problems.append("replication did not catch up (see above)")
        if not demo.stop_worker():
            problems.append("the worker did not stop within 30 s")
        if demo.worker_error is not None:
            problems.append(f"the worker stopped with an error: {demo.worker_error}")
        if not demo.summary():
            problems.insert(0, "the mirrors are not identical to the source")
        ok = not problems
    except KeyboardInterrupt:
        say("\ninterrupted")
        interrupted = True
    except PdrError as exc:  # a configuration or connection problem, explained by the message
        say()
        problems.append(str(exc))
    finally:
        if demo is not None:
            # after Ctrl-C, a write of ours cut short may still hold the source's lock, which the
            # worker then waits for: give it a moment, then leave (the thread is a daemon)
            demo.stop_worker(timeout=3.0 if interrupted else 30.0)
            for engine in [getattr(demo, "source", None), *getattr(demo, "dests", [])]:
                if engine is not None:
                    engine.dispose()
        if "django_pdr.connections" in sys.modules:
            from django import db

            from django_pdr.connections import dispose_all

            dispose_all()
            db.connections.close_all()
        if keep:
            say(f"\n   files kept in {directory}: {', '.join(FILES.values())} (open them with sqlite3)")
        else:
            shutil.rmtree(directory, ignore_errors=True)

    say()
    elapsed = time.monotonic() - started
    if interrupted:
        return 130
    if ok:
        say(f"Done in {elapsed:.1f} s: both mirrors are identical to the source.")
        if not keep:
            say("Run with --keep (or --dir DIR) to look at the SQLite files afterwards.")
        return 0
    say(f"FAILED after {elapsed:.1f} s: {'; '.join(problems) or 'see above'}.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
