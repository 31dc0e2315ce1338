"""Health for monitoring systems (issue 18, items 3–5): ``pdr-status`` and its exit codes,
Prometheus metrics (view and ``--metrics-port``), JSON log lines."""
import json
import logging
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import override_settings
from prometheus_client.parser import text_string_to_metric_families

from django_pdr import deadletters, metrics, worker
from django_pdr.logformat import JsonFormatter
from django_pdr.models import Database, DeadLetter, Reflection, SourceTable
from tests.processes import ROOT, django_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def mirror(tmp_path):
    """A SQLite table replicated (one pass done) into a SQLite mirror."""
    src = tmp_path / "shop.db"
    with sqlite3.connect(src) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO orders VALUES (1, 'a'), (2, 'b')")
    orders = SourceTable.add(Database.from_url("shop", f"sqlite:///{src}"), "orders")
    reflection = Reflection(source=orders, destination=Database.from_url(
        "reporting", f"sqlite:///{tmp_path / 'rep.db'}", create_file=True), destination_table="orders")
    reflection.full_clean()
    reflection.save()
    assert not worker.run().failed
    reflection.refresh_from_db()
    return reflection, src


def write(path, *statements):
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)


def command(*args):
    """A management command in a process of its own, as an operator or a monitoring agent runs it."""
    return subprocess.run([sys.executable, "-m", "django", *args], capture_output=True, text=True, cwd=ROOT,
                          env=django_env(connection.settings_dict["NAME"]), timeout=120)


def status(*args):
    """pdr-status: (exit code, output)."""
    proc = command("pdr-status", *args)
    return proc.returncode, proc.stdout + proc.stderr


# -- pdr-status -----------------------------------------------------------------------
def test_status_ok_then_warning_then_critical(mirror):
    reflection, src = mirror
    code, out = status()
    assert code == 0, out
    assert "OK: 1 reflection(s)" in out and "installed" in out

    # changes no worker applies: measured live in the source, not taken from the worker's report
    write(src, "INSERT INTO orders VALUES (3, 'c')", "UPDATE orders SET v = 'x' WHERE id = 1")
    code, out = status()
    assert code == 1, out
    assert "no worker holds this reflection" in out
    code, out = status("--json")
    doc = json.loads(out)
    assert doc["status"] == "WARNING" and doc["reflections"][0]["pending"] == 2
    code, out = status("--critical-pending", "1")
    assert code == 2 and "2 pending events > 1" in out, out
    code, out = status("--max-lag", "3600", "--critical-lag", "7200")
    assert code == 1 and "lag" not in out.split("OK")[0].split("WARNING: ")[-1], out

    assert not worker.run().failed
    assert status()[0] == 0


def test_status_critical_for_dead_letters_errors_and_capture(mirror):
    reflection, src = mirror
    deadletters.record(reflection, (1,), "value too long")
    code, out = status()
    assert code == 2 and "1 row(s) set aside as dead letters" in out, out
    DeadLetter.objects.all().delete()
    assert status()[0] == 0

    Reflection.objects.filter(pk=reflection.pk).update(status="error", last_error="destination unreachable")
    code, out = status()
    assert code == 2 and "error: destination unreachable" in out, out
    Reflection.objects.filter(pk=reflection.pk).update(status="running", last_error="")

    with sqlite3.connect(src) as conn:
        trigger = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]
        conn.execute(f'DROP TRIGGER "{trigger}"')
    code, out = status()
    assert code == 2 and "capture partial" in out and "pdr-install" in out, out
    assert status("--no-capture")[0] == 0

    Reflection.objects.filter(pk=reflection.pk).update(active=False)
    assert status()[0] == 0  # an inactive reflection never alerts


def test_status_refuses_unknown_ids_and_negative_limits(mirror):
    assert status("-r", "999")[0] == 1
    code, out = status("--max-lag", "-1")
    assert code == 1 and "zero or more" in out


# -- Prometheus -------------------------------------------------------------------------
def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams, name, **labels):
    family = fams[name]
    return [s.value for s in family.samples
            if s.name in (name, name + "_total") and all(s.labels.get(k) == v for k, v in labels.items())]


@override_settings(PDR={"METRICS_TOKEN": "t0ken-for-tests"})
def test_metrics_view_needs_a_token_or_staff(mirror, client):
    reflection, src = mirror
    assert client.get("/pdr/metrics").status_code == 403
    assert client.get("/pdr/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    response = client.get("/pdr/metrics", HTTP_AUTHORIZATION="Bearer t0ken-for-tests")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    fams = families(response.content.decode())
    rid = str(reflection.pk)
    assert value(fams, "pdr_reflection_events_applied", reflection=rid) == [reflection.events_applied]
    assert value(fams, "pdr_reflection_rows_applied", reflection=rid) == [2]
    assert value(fams, "pdr_reflection_status", reflection=rid, status="running") == [1]
    assert value(fams, "pdr_reflection_status", reflection=rid, status="error") == [0]
    assert value(fams, "pdr_reflection_dead_letters", reflection=rid) == [0]
    assert value(fams, "pdr_reflection_active", reflection=rid) == [1]
    assert value(fams, "pdr_reflection_last_success_timestamp_seconds", reflection=rid)[0] == pytest.approx(
        reflection.last_applied_at.timestamp())

    deadletters.record(reflection, (2,), "refused")
    fams = families(client.get("/pdr/metrics", HTTP_AUTHORIZATION="Bearer t0ken-for-tests").content.decode())
    assert value(fams, "pdr_reflection_dead_letters", reflection=rid) == [1]

    user = User.objects.create_user("watcher", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get("/pdr/metrics").status_code == 403  # staff without the permission
    user.user_permissions.add(Permission.objects.get(codename="view_reflection"))
    assert client.get("/pdr/metrics").status_code == 200


def test_worker_metrics_port_counts_passes(mirror):
    reflection, src = mirror
    server = metrics.serve(0, "127.0.0.1")
    try:
        before = metrics.STATS.passes
        write(src, "INSERT INTO orders VALUES (7, 'g')")
        worker.run()
        port = server.server_address[1]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    fams = families(text)
    assert value(fams, "pdr_worker_passes")[0] >= before + 1
    assert value(fams, "pdr_worker_events_applied")[0] >= 1
    assert value(fams, "pdr_reflection_pending_events", reflection=str(reflection.pk)) == [0]


# -- JSON logs --------------------------------------------------------------------------
def test_json_log_lines_carry_the_pass(mirror, caplog):
    reflection, src = mirror
    write(src, "INSERT INTO orders VALUES (4, 'd')", "DELETE FROM orders WHERE id = 2")
    with caplog.at_level(logging.INFO, logger="django_pdr"):
        worker.run()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if hasattr(r, "events")]
    assert lines, [r.getMessage() for r in caplog.records]
    line = lines[-1]
    assert line["reflection"] == reflection.pk and line["events"] == 2 and line["rows"] == 2
    assert line["source"] == "shop: orders" and line["destination"] == "reporting:orders"
    assert line["level"] == "INFO" and isinstance(line["seconds"], float) and line["time"].endswith("+00:00")


def test_pdr_reflect_log_format_json_writes_json_lines(mirror):
    reflection, src = mirror
    write(src, "INSERT INTO orders VALUES (5, 'e')")
    proc = command("pdr-reflect", "--log-format", "json", "-v", "1")
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert any(o.get("reflection") == reflection.pk and o.get("events") == 1 for o in objects), proc.stderr
