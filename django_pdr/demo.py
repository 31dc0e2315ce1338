"""A live demo of django-pdr that needs nothing but Python: SQLite → two SQLite mirrors.

    python -m django_pdr.demo [--dir DIR] [--rows N] [--keep] [--timeout S] [-v]

It uses the public API only, as a project would: ``Database.from_url``,
``SourceTable.add`` (primary key discovered, capture installed), validated
``Reflection`` rows, the worker (``django_pdr.worker.run``, what ``pdr-reflect -i``
runs) in a background thread, and ``django_pdr.verify.verify`` (what ``pdr-verify``
runs) to decide when each mirror equals the source.  Each round writes to the
source with plain SQL and waits until both mirrors are identical.

Exit status: 0 when both mirrors equal the source at the end, 1 when one differs
(or replication stalls), 2 on bad arguments, 130 when interrupted.
"""
from __future__ import annotations

import argparse
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

FILES = {"django": "django.sqlite3", "source": "source.sqlite3",
         "dest1": "destination-1.sqlite3", "dest2": "destination-2.sqlite3"}
MARKER = ".pdr-demo"  # in a --dir the demo made: a later run may replace its files
TABLE, MIRROR = "orders", "orders_mirror"
SOURCE = [
    f"""CREATE TABLE {TABLE} (region TEXT NOT NULL, order_no INTEGER NOT NULL, customer TEXT,
        amount NUMERIC(12, 2), placed_at TIMESTAMP, note TEXT, PRIMARY KEY (region, order_no))""",
    f"""INSERT INTO {TABLE} VALUES
        ('Cairo', 1, 'Nour El-Sherif', 149.90, '2024-03-01 09:15:00', '☕ coffee beans, 2 kg'),
        ('Cairo', 2, 'Ελένη Παππά', NULL, NULL, 'price on request'),
        ('São Paulo', 1, 'João Gonçalves', 1299.00, '2024-03-02 14:00:00', NULL),
        ('Zürich', 1, 'Zoë Müller', 0.05, '2024-03-03 23:59:59', 'smallest order ever 🎉'),
        ('東京', 1, '山田 太郎', 98765.43, '2024-03-04 08:30:00', '速達 🚚')""",
]
REGIONS = ["Cairo", "São Paulo", "Zürich", "東京"]
CUSTOMERS = ["Nour El-Sherif", "João Gonçalves", "Zoë Müller", "山田 太郎", "Åsa Öberg", "Иван Петров"]
NOTES = [None, "gift wrap 🎁", "express 🚚", "naïve façade", "fragile 📦", "déjà vu"]


def say(text="", end="\n"):
    print(text, end=end, flush=True)


def width(text: str) -> int:
    """Terminal columns of ``text`` (CJK and emoji take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1
               for c in text)


def configure_django(directory: str):
    from django.conf import settings

    settings.configure(
        SECRET_KEY="django-pdr-demo-not-secret", USE_TZ=True, TIME_ZONE="UTC",
        PGCRYPTO_DEFAULT_KEY="django-pdr-demo: credentials of demo databases only",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_ace", "django_pdr"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "OPTIONS": {"timeout": 30},
                               "NAME": os.path.join(directory, FILES["django"])}})
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False, skip_checks=True)


def write(engine, statements) -> int:
    """Run (sql, params) pairs on the source in one transaction; rows affected."""
    with engine.begin() as conn:
        return sum(conn.execute(sa.text(sql), params).rowcount for sql, params in statements)


def rounds(rows: int):
    """(label, [(sql, params) ...], statements per transaction: 0 for all in one) of each round."""
    rng = random.Random(2024)
    insert = f"INSERT INTO {TABLE} VALUES (:r, :n, :c, :a, :p, :note)"
    new = [(insert, {"r": REGIONS[i % 4], "n": 1000 + i, "c": rng.choice(CUSTOMERS),
                     "a": None if i % 17 == 5 else rng.randrange(100, 2_000_000) / 100,
                     "p": f"2024-04-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00", "note": NOTES[i % 6]})
           for i in range(rows)]
    chunk = max(10, -(-rows // 10))  # about ten transactions, committed while the worker runs
    return [
        (f"INSERT {rows} rows, {chunk} per transaction", new, chunk),
        ("UPDATE Zürich amounts +10%; key 東京/1 → Cairo/500", [
            (f"UPDATE {TABLE} SET amount = round(amount * 1.1, 2), note = coalesce(note || ' ', '') || '✅ +10%' "
             "WHERE region = 'Zürich'", {}),
            # a key change: the mirrors drop the old key and gain the new one
            (f"UPDATE {TABLE} SET region = 'Cairo', order_no = 500 WHERE region = '東京' AND order_no = 1", {}),
        ], 0),
        ("DELETE every 7th order; INSERT+DELETE in one transaction", [
            (f"DELETE FROM {TABLE} WHERE order_no % 7 = 0", {}),
            # inserted and deleted in one transaction: the mirrors never see it
            (f"INSERT INTO {TABLE} (region, order_no, customer) VALUES ('Cairo', 999, 'ephemeral 👻')", {}),
            (f"DELETE FROM {TABLE} WHERE region = 'Cairo' AND order_no = 999", {}),
        ], 0),
        ("set NULLs in São Paulo and 東京; NULL → 42.00 in Cairo", [
            (f"UPDATE {TABLE} SET note = NULL, placed_at = NULL WHERE region = 'São Paulo' AND order_no % 3 = 0",
             {}),
            (f"UPDATE {TABLE} SET amount = NULL WHERE region = '東京' AND order_no % 4 = 0", {}),
            (f"UPDATE {TABLE} SET amount = 42.00, note = 'priced 💶' WHERE region = 'Cairo' AND amount IS NULL",
             {}),
        ], 1),
    ]


def configure(paths: dict):
    """The replication, as a project configures it in code: two reflections of one source table."""
    from django_pdr.models import Database, Reflection, SourceTable

    source = Database.from_url("demo source", f"sqlite:///{paths['source']}")
    orders = SourceTable.add(source, TABLE)  # discovers the key, installs capture, saves
    reflections = []
    for n in (1, 2):
        destination = Database.from_url(f"demo destination {n}", f"sqlite:///{paths[f'dest{n}']}",
                                        create_file=True)
        reflection = Reflection(source=orders, destination=destination, destination_table=MIRROR)
        reflection.full_clean()
        reflection.save()
        reflections.append(reflection)
    return orders, reflections


def differences(reflection):
    """The rows by which ``reflection``'s mirror differs from the source (verify.py's comparison)."""
    from django_pdr.errors import PdrError
    from django_pdr.verify import verify

    try:
        return [d.describe() for d in verify(reflection).differences]
    except PdrError as exc:  # e.g. the mirror table is not created yet
        return [str(exc)]


def wait_identical(reflections, timeout: float, worker_failed) -> tuple[bool, list]:
    deadline = time.monotonic() + timeout
    while True:
        left = [(r, differences(r)) for r in reflections]
        left = [(r, d) for r, d in left if d]
        if not left or worker_failed() or time.monotonic() > deadline:
            return not left, left
        time.sleep(0.1)


def show(engine, title: str, limit: int = 8):
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM {title} ORDER BY region, order_no LIMIT {limit}"))
        columns, rows = list(result.keys()), [["NULL" if v is None else str(v) for v in r] for r in result]
    widths = [max(width(x) for x in [c, *(r[i] for r in rows)]) for i, c in enumerate(columns)]
    for line in [columns, ["─" * w for w in widths], *rows]:
        say("     " + "  ".join(x + " " * (w - width(x)) for x, w in zip(line, widths)).rstrip())


def run(args, directory: str) -> list[str]:
    """The demo; returns the problems found (none: both mirrors equal the source)."""
    paths = {k: os.path.join(directory, v) for k, v in FILES.items()}
    say("1. Setting up")
    configure_django(directory)
    source = sa.create_engine(f"sqlite:///{paths['source']}")
    write(source, [(sql, {}) for sql in SOURCE])
    orders, reflections = configure(paths)
    say(f"   source {FILES['source']}: table {TABLE}, key ({', '.join(orders.key_columns)}), "
        f"capture {orders.capture_status} (event table {orders.event_table})")
    for n, reflection in enumerate(reflections, 1):
        say(f"   reflection {n}: → {FILES[f'dest{n}']} table {MIRROR}")

    from django import db

    from django_pdr import worker

    stop, failure = threading.Event(), []

    def work():
        try:
            worker.run(interval=0.2, stop_event=stop)  # what `manage.py pdr-reflect -i 0.2` runs
        except BaseException as exc:
            failure.append(exc)
            logging.getLogger("django_pdr.demo").exception("the worker stopped")
        finally:
            db.connections.close_all()

    thread = threading.Thread(target=work, name="pdr-worker", daemon=True)
    thread.start()
    say("   worker: running in a background thread")
    say()
    say("2. Writing to the source while the worker runs")
    problems = []
    steps = [("the 5 rows already there (initial copy)", [], 0), *rounds(args.rows)]
    label_width = max(width(label) for label, _, _ in steps)
    try:
        for n, (label, statements, per) in enumerate(steps):
            say(f"   round {n}  {label}{' ' * (label_width - width(label))}  ", end="")
            started = time.monotonic()
            per = per or max(1, len(statements))
            count = sum(write(source, statements[i:i + per]) for i in range(0, len(statements), per)) or 5
            ok, left = wait_identical(reflections, args.timeout, lambda: bool(failure))
            if ok:
                say(f"{count:>5} rows  ✓ both equal after {time.monotonic() - started:.2f} s")
                continue
            say(f"{count:>5} rows  ✗")
            for reflection, found in left:
                reflection.refresh_from_db()
                say(f"     {reflection.destination.name}: {len(found)} difference(s), e.g. {found[0]}")
                if reflection.last_error:
                    say(f"     status {reflection.status}: {reflection.last_error}")
            problems.append("replication did not catch up (see above)")
            break
    finally:
        stop.set()
        thread.join(30)
    if thread.is_alive():
        problems.append("the worker did not stop within 30 s")
    if failure:
        problems.append(f"the worker stopped with an error: {failure[0]}")

    say()
    say("3. Result")
    with source.connect() as conn:
        total = conn.execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar()
    say(f"   source: {total} rows")
    for n, reflection in enumerate(reflections, 1):
        found = differences(reflection)
        rows = sa.create_engine(f"sqlite:///{paths[f'dest{n}']}")
        with rows.connect() as conn:
            try:
                count = conn.execute(sa.text(f"SELECT count(*) FROM {MIRROR}")).scalar()
            except sa.exc.OperationalError:  # no such table
                count = 0
        if found:
            say(f"   destination {n}: {count} rows, DIFFERS from the source ✗ ({len(found)} difference(s))")
            for line in found[:3]:
                say(f"      {line}")
            problems.insert(0, "the mirrors are not identical to the source")
        else:
            say(f"   destination {n}: {count} rows, identical to the source ✓")
        rows.dispose()
    say()
    say(f"   destination 1, table {MIRROR}: the first rows")
    show(sa.create_engine(f"sqlite:///{paths['dest1']}"), MIRROR)
    source.dispose()
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m django_pdr.demo", description=(
        "Live django-pdr demo: replicate a SQLite table into two SQLite mirrors while writing to it, "
        "then check the mirrors are identical. Needs nothing but Python."))
    parser.add_argument("--dir", help="put the SQLite files here and keep them (default: a temporary "
                                      "directory, deleted at exit)")
    parser.add_argument("--rows", type=int, default=100, help="rows to insert in round 1 (default: 100)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--timeout", type=float, help="seconds to wait for the mirrors after each round "
                                                      "(default: 10, plus 1 per 1000 rows)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="the worker's log (-vv: DEBUG)")
    args = parser.parse_args(argv)
    if args.rows < 0 or (args.timeout is not None and args.timeout <= 0):
        parser.error("--rows must be 0 or more and --timeout more than 0")
    args.timeout = args.timeout or 10.0 + args.rows // 1000
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="replace")  # a non-UTF-8 terminal gets '?' rather than a crash
    logging.basicConfig(format="   %(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)])

    if args.dir:
        directory = os.path.abspath(args.dir)
        os.makedirs(directory, exist_ok=True)
        ours = [name for name in os.listdir(directory) if name.split("-wal")[0].split("-journal")[0]
                in FILES.values()]
        if ours and not os.path.exists(os.path.join(directory, MARKER)):
            parser.error(f"{directory} already holds {', '.join(ours)} (not from an earlier demo): "
                         f"choose another --dir")
        for name in ours:
            os.remove(os.path.join(directory, name))
        open(os.path.join(directory, MARKER), "w").close()
    else:
        directory = tempfile.mkdtemp(prefix="pdr-demo-")
    say("django-pdr live demo: one SQLite table replicated into two SQLite mirrors")
    say(f"   files in {directory}")
    say()
    started = time.monotonic()
    try:
        problems = run(args, directory)
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        if args.dir or args.keep:
            say(f"\n   files kept in {directory} (open them with sqlite3)")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    say()
    if problems:
        say(f"FAILED after {time.monotonic() - started:.1f} s: {'; '.join(problems)}.")
        return 1
    say(f"Done in {time.monotonic() - started:.1f} s: both mirrors are identical to the source.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
