"""The newcomer's demo (``python -m django_pdr.demo``): SQLite only, run as users run it.

The demo runs in a subprocess with DJANGO_SETTINGS_MODULE removed, since it
configures Django itself.  Its verdict is checked, and the SQLite files it
leaves are compared again here, independently of the demo's own comparison.
"""
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = "ORDER BY region, order_no"


def run_demo(*args, code=None, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONIOENCODING"] = "utf-8"
    command = [sys.executable, *(("-c", code) if code else ("-m", "django_pdr.demo")), *args]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, timeout=180,
                          encoding="utf-8", errors="replace")
    return proc, f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def table_rows(path, table):
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT * FROM {table} {ORDER}").fetchall()


def test_demo_replicates_live_into_two_identical_mirrors(tmp_path):
    proc, output = run_demo("--rows", "50", "--dir", str(tmp_path))
    assert proc.returncode == 0, output

    source = re.search(r"^ +source: +(\d+) rows", proc.stdout, re.M)
    assert source, output
    count = int(source.group(1))
    for n in (1, 2):
        # printed only when the destination's rows equal the source's, value for value
        verdict = re.search(rf"^ +destination {n}: (\d+) rows, identical to the source ✓", proc.stdout, re.M)
        assert verdict, output
        assert int(verdict.group(1)) == count, output
    assert "DIFFERS" not in proc.stdout and "✗" not in proc.stdout, output
    assert len(re.findall(r"^ +round \d .*✓ both equal after [\d.]+ s$", proc.stdout, re.M)) == 5, output

    # the files themselves, compared raw (storage classes included) without the demo's code
    expected = table_rows(tmp_path / "source.sqlite3", "orders")
    assert len(expected) == count > 5
    for n in (1, 2):
        assert table_rows(tmp_path / f"destination-{n}.sqlite3", "orders_mirror") == expected
    keys = {(r[0], r[1]) for r in expected}
    assert ("Cairo", 500) in keys and ("東京", 1) not in keys  # the key change
    assert ("Cairo", 999) not in keys  # inserted and deleted in one transaction
    assert not any(r[1] % 7 == 0 for r in expected)  # the deletes
    assert any(r[3] is None for r in expected) and any("🎁" in (r[5] or "") for r in expected)


SABOTAGE = """
import sys
from django_pdr import demo

configure = demo.configure

def sabotaged(paths):
    orders, reflections = configure(paths)
    reflections[1].active = False  # destination 2 is never written: not a mirror
    reflections[1].save()
    return orders, reflections

demo.configure = sabotaged
sys.exit(demo.main(sys.argv[1:]))
"""


def test_demo_fails_loudly_when_a_mirror_differs():
    proc, output = run_demo("--rows", "50", "--timeout", "8", code=SABOTAGE)  # room for destination 1 under load
    assert proc.returncode == 1, output
    assert re.search(r"^ +destination 1: \d+ rows, identical to the source ✓", proc.stdout, re.M), output
    assert re.search(r"^ +destination 2: \d+ rows, DIFFERS from the source ✗", proc.stdout, re.M), output
    assert not re.search(r"destination 2: \d+ rows, identical", proc.stdout), output
    assert "FAILED" in proc.stdout, output
    # without --dir the files live in a temporary directory, removed at exit
    where = re.search(r"^ +files in (.+)$", proc.stdout, re.M)
    assert where and not os.path.exists(where.group(1)), output
