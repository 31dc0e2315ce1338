#!/usr/bin/env python3
"""Fresh-project test: the wheel in a new virtualenv and a new Django project, set up
by following README's "Quick start in your project" word for word, replicating a
SQLite table with ``manage.py pdr-reflect``.

    python tests/fresh_project.py [--python PYTHON] [--django "Django>=5.2,<6"] [--wheel FILE] [--keep]

Steps (each printed, with its duration):

 1. build the wheel from a copy of this checkout (``python -m build``: sdist, then the wheel
    from it, when ``build`` is installed; else ``pip wheel``), or use ``--wheel``;
 2. create a virtualenv with ``--python`` and ``pip install`` the wheel (+ ``--django``);
 3. ``django-admin startproject mysite``;
 4. apply README's settings snippet (its INSTALLED_APPS entries and its PGCRYPTO_DEFAULT_KEY
    line, verbatim) and check the generated urls.py already has README's admin URL;
 5. ``manage.py migrate`` and ``manage.py check`` (no issue at all);
 6. the wheel's templates and static files are found by Django's loaders;
 7. README's ORM steps (Database, SourceTable full_clean/save/install, Reflection) with
    SQLite source and destination files, rows inserted before and after install;
 8. ``manage.py pdr-reflect`` (one pass, as README says); the destination equals the source,
    compared with the sqlite3 module, not with django-pdr; more changes, another pass,
    equal again;
 9. the admin pages render; ``pdr-export`` / ``pdr-import --dry-run`` round trip;
10. ``manage.py check --database default`` warns ``django_pdr.W003`` with the pip hint for a
    MySQL Database while PyMySQL is not installed (it is an extra).

Exits non-zero at the first failure.  Uses pip's cache; needs the package index (or a
populated cache).  Runs in ~30 s.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROJECT = "mysite"  # "site" itself is refused by startproject: it is a stdlib module


class Failure(Exception):
    pass


class Runner:
    def __init__(self, workdir: Path, verbose: bool):
        self.workdir = workdir
        self.verbose = verbose
        self.step_no = 0
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        self.env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONIOENCODING="utf-8",
                        PYTHONDONTWRITEBYTECODE="1")

    def step(self, title):
        self.step_no += 1
        print(f"\n[{self.step_no}] {title}", flush=True)
        return _Timer()

    def run(self, *command, cwd=None, check=True, timeout=600, show=False):
        command = [str(c) for c in command]
        if self.verbose:
            print("    $ " + " ".join(command), flush=True)
        proc = subprocess.run(command, cwd=cwd or self.workdir, env=self.env, capture_output=True,
                              text=True, encoding="utf-8", errors="replace", timeout=timeout)
        if show or self.verbose:
            for line in (proc.stdout + proc.stderr).splitlines():
                if "is ignored: it is neither a file nor a directory" not in line:  # machine pip config
                    print(f"    | {line}")
        if check and proc.returncode != 0:
            raise Failure(f"command failed (exit {proc.returncode}): {' '.join(command)}\n"
                          f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
        return proc


class _Timer:
    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            print(f"    ok ({time.monotonic() - self.start:.1f} s)", flush=True)


# -- README ----------------------------------------------------------------------------------
def quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Quick start in your project\n(.*?)(?=^## )", text, re.M | re.S)
    if not match:
        raise Failure("README.md has no '## Quick start in your project' section")
    return match.group(1)


def code_blocks(section: str, language: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(rf"^ *```{language}\n(.*?)^ *```", section, re.M | re.S)]


def readme_instructions() -> dict:
    """What README's quick start tells a user to do, extracted (so README drift fails this test)."""
    section = quick_start()
    python = code_blocks(section, "python")
    settings_block = next((b for b in python if "INSTALLED_APPS" in b), None)
    urls_block = next((b for b in python if "urlpatterns" in b), None)
    orm_block = next((b for b in python if "django_pdr.models" in b), None)
    if not (settings_block and urls_block and orm_block):
        raise Failure("README quick start lacks the settings, urls or ORM snippet")
    apps = re.findall(r'^\s*"([\w.]+)",\s*$', settings_block, re.M)
    key_line = next((line.strip() for line in settings_block.splitlines()
                     if line.strip().startswith("PGCRYPTO_DEFAULT_KEY")), None)
    imports = [line.strip() for line in settings_block.splitlines() if line.strip().startswith("import ")]
    key_env = re.search(r'os\.environ\["(\w+)"\]', key_line or "")
    if apps != ["django_ace", "django_pdr"] or not key_line or not key_env:
        raise Failure(f"README settings snippet changed: apps {apps}, key line {key_line!r}")
    for needed in ('pip install "django-pdr>=2"', "python manage.py migrate", "python manage.py createsuperuser",
                   "python manage.py pdr-reflect"):
        if needed not in section:
            raise Failure(f"README quick start no longer says {needed!r}")
    # The API the ORM snippet uses is the API this test uses (step 7).
    for call in ("Database.from_url(", '"sqlite:////', "create_file=True", "SourceTable.add(",
                 "Reflection(source=", "destination=", "destination_table=", ".full_clean()", ".save()"):
        if call not in orm_block:
            raise Failure(f"README ORM snippet no longer uses {call!r}: update tests/fresh_project.py")
    url_lines = [line.strip() for line in urls_block.splitlines() if line.strip()]
    return {"apps": apps, "key_line": key_line, "imports": imports, "key_env": key_env.group(1),
            "url_lines": url_lines}


# -- the test --------------------------------------------------------------------------------
COPY_IGNORE = shutil.ignore_patterns(".git", ".tox", ".venv", "venv", "build", "dist", "site", "*.egg-info",
                                     "__pycache__", "*.pyc", ".pytest_cache", "*.sqlite3", "demo-data")


def build_wheel(runner: Runner, workdir: Path) -> Path:
    """Build from a copy of the checkout: the checkout stays clean (no build/, no egg-info) and
    concurrent runs cannot collide.  With the ``build`` package: sdist, then the wheel from the
    sdist (so MANIFEST.in is exercised too); otherwise ``pip wheel``."""
    source, outdir = workdir / "src", workdir / "dist"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
    if importlib.util.find_spec("build") is not None:
        runner.run(sys.executable, "-m", "build", "--outdir", outdir, source, cwd=source)
    else:
        runner.run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", outdir, source,
                   cwd=source)
    wheels = sorted(outdir.glob("django_pdr-*.whl"))
    if len(wheels) != 1:
        raise Failure(f"expected one wheel in {outdir}, found {wheels}")
    return wheels[0]


SOURCE_DDL = ('CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, '
              'total NUMERIC, placed TEXT, note TEXT)')


def source_rows(path: Path, table: str):
    with sqlite3.connect(path) as conn:
        return conn.execute(f'SELECT id, customer, total, placed, note FROM "{table}" ORDER BY id').fetchall()


def write_source(path: Path, *statements):
    conn = sqlite3.connect(path)
    try:
        with conn:
            for statement in statements:
                conn.execute(statement)
    finally:
        conn.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter of the new virtualenv")
    parser.add_argument("--django", default=None,
                        help='Django requirement, e.g. "Django>=5.2,<6" (default: what pip picks)')
    parser.add_argument("--wheel", type=Path, default=None, help="use this wheel instead of building one")
    parser.add_argument("--workdir", type=Path, default=None, help="work here (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every command and its output")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pdr-fresh-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(workdir, args.verbose)
    started = time.monotonic()
    print(f"fresh-project test in {workdir} (python {args.python}, {args.django or 'default Django'})")
    try:
        run_all(runner, workdir, args)
    except Failure as exc:
        print(f"\nFAILED at step {runner.step_no}: {exc}", file=sys.stderr, flush=True)
        print(f"(work directory kept: {workdir})", file=sys.stderr)
        return 1
    print(f"\nPASSED: fresh project works ({time.monotonic() - started:.0f} s)", flush=True)
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_all(runner: Runner, workdir: Path, args):
    with runner.step("README quick start: read the instructions"):
        readme = readme_instructions()
        print(f"    apps {readme['apps']}; {readme['key_line']}")

    with runner.step("build the wheel" if not args.wheel else f"use the wheel {args.wheel}"):
        wheel = args.wheel.resolve() if args.wheel else build_wheel(runner, workdir)
        print(f"    {wheel.name}")

    venv = workdir / "venv"
    py = venv / "bin" / "python"
    with runner.step(f"new virtualenv, pip install {wheel.name} {args.django or ''}".rstrip()):
        runner.run(args.python, "-m", "venv", venv)
        runner.run(py, "-m", "pip", "install", "-q", wheel, *([args.django] if args.django else []))
        versions = runner.run(py, "-c", "import sys, django, django_pdr, sqlalchemy; "
                              "print(sys.version.split()[0], django.get_version(), django_pdr.__version__, "
                              "sqlalchemy.__version__, django_pdr.__file__)").stdout.split()
        print(f"    Python {versions[0]}, Django {versions[1]}, django-pdr {versions[2]}, "
              f"SQLAlchemy {versions[3]}")
        if not versions[4].startswith(str(venv)):
            raise Failure(f"django_pdr imported from {versions[4]}, not from the new virtualenv")
        has_pymysql = runner.run(py, "-c", "import pymysql", check=False).returncode == 0
        if has_pymysql:
            raise Failure("PyMySQL is installed without the [mysql] extra")

    project = workdir / "project"
    manage_dir = project
    with runner.step(f"django-admin startproject {PROJECT}"):
        project.mkdir()
        runner.run(venv / "bin" / "django-admin", "startproject", PROJECT, project)

    def manage(*command, **kwargs):
        return runner.run(py, "manage.py", *command, cwd=manage_dir, **kwargs)

    settings_path = project / PROJECT / "settings.py"
    with runner.step("README step 2 (settings) and step 3 (urls)"):
        settings = settings_path.read_text(encoding="utf-8")
        match = re.search(r"^INSTALLED_APPS = \[\n(.*?)^\]", settings, re.M | re.S)
        if not match:
            raise Failure("startproject's settings.py has no INSTALLED_APPS list")
        added = "".join(f'    "{app}",\n' for app in readme["apps"])
        settings = settings[:match.end(1)] + added + settings[match.end(1):]
        settings += "\n" + "".join(line + "\n" for line in readme["imports"]) + readme["key_line"] + "\n"
        runner.env[readme["key_env"]] = secrets.token_urlsafe(32)  # as README says: generated, in the environment
        settings_path.write_text(settings, encoding="utf-8")
        urls = (project / PROJECT / "urls.py").read_text(encoding="utf-8")
        def compact(text):  # startproject: 'quotes', the list over lines, a trailing comma
            return re.sub(r"\s+", "", text).replace("'", '"').replace(",]", "]")

        missing = [line for line in readme["url_lines"] if compact(line) not in compact(urls)]
        if missing:
            raise Failure(f"startproject's urls.py lacks README's {missing}")
        print("    INSTALLED_APPS += " + ", ".join(readme["apps"]) + "; admin URLs already in urls.py")

    with runner.step("README step 4: manage.py migrate"):
        out = manage("migrate", "--noinput").stdout
        if "django_pdr" not in out:
            raise Failure(f"migrate did not apply django_pdr's migrations:\n{out}")

    with runner.step("README step 4: manage.py createsuperuser"):
        runner.env["DJANGO_SUPERUSER_PASSWORD"] = secrets.token_urlsafe(16)
        manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")

    with runner.step("manage.py check (no issue at all)"):
        proc = manage("check")
        output = proc.stdout + proc.stderr
        if "System check identified no issues" not in output or "django_pdr." in output:
            raise Failure(f"manage.py check reported issues:\n{output}")
        proc = manage("makemigrations", "--check", "--dry-run", "django_pdr", check=False)
        if proc.returncode != 0:
            raise Failure(f"the models differ from the shipped migrations on this Django:\n"
                          f"{proc.stdout}{proc.stderr}")

    templates = sorted(str(p.relative_to(ROOT / "django_pdr" / "templates"))
                       for p in (ROOT / "django_pdr" / "templates").rglob("*.html"))
    statics = sorted(str(p.relative_to(ROOT / "django_pdr" / "static"))
                     for p in (ROOT / "django_pdr" / "static").rglob("*") if p.is_file())
    with runner.step(f"the wheel's {len(templates)} templates and {len(statics)} static files are found"):
        code = (
            "import json, django_pdr\n"
            "from pathlib import Path\n"
            "from django.template.loader import get_template\n"
            "from django.contrib.staticfiles import finders\n"
            "pkg = Path(django_pdr.__file__).parent\n"
            f"templates, statics = {templates!r}, {statics!r}\n"
            "bad = [t for t in templates if not str(get_template(t).origin.name).startswith(str(pkg))]\n"
            "bad += [s for s in statics if not str(finders.find(s) or '').startswith(str(pkg))]\n"
            "print(json.dumps(bad))\n")
        bad = json.loads(manage("shell", "-c", code).stdout.strip().splitlines()[-1])
        if bad:
            raise Failure(f"not found in the installed package: {bad}")

    data = workdir / "data"
    data.mkdir()
    source_db, dest_db = data / "source.sqlite3", data / "reporting.sqlite3"
    with runner.step("README step 5 in code: SQLite source and destination, SourceTable, Reflection"):
        write_source(source_db, SOURCE_DDL,
                     "INSERT INTO orders VALUES (1, 'Ada', 12.50, '2024-01-02', NULL)",
                     "INSERT INTO orders VALUES (2, 'Grace', 7, '2024-01-03', 'gift 🎁')",
                     "INSERT INTO orders VALUES (3, 'Linus', NULL, NULL, 'x')")
        code = textwrap.dedent(f"""
            from django_pdr.models import Database, SourceTable, Reflection

            shop = Database.from_url("shop", "sqlite:///" + {str(source_db)!r})
            reporting = Database.from_url("reporting", "sqlite:///" + {str(dest_db)!r}, create_file=True)
            orders = SourceTable.add(shop, "orders")  # finds the primary key, installs capture, saves
            mirror = Reflection(source=orders, destination=reporting, destination_table="orders")
            mirror.full_clean()                        # checks the mapping against both tables
            mirror.save()
            print("key", orders.key_columns, orders.capture_status)
        """)
        out = manage("shell", "-c", code).stdout
        if "key ['id'] installed" not in out:
            raise Failure(f"the primary key was not discovered:\n{out}")
        write_source(source_db,
                     "INSERT INTO orders VALUES (4, 'Barbara', 99.99, '2024-02-01', 'after install')",
                     "UPDATE orders SET total = 13.00 WHERE id = 1",
                     "DELETE FROM orders WHERE id = 3")

    with runner.step("README step 6: manage.py pdr-reflect (one pass); destination == source"):
        manage("pdr-reflect")
        compare(source_db, dest_db, expected_ids=[1, 2, 4])

    with runner.step("live changes: insert, update, key change, delete; pdr-reflect; equal again"):
        write_source(source_db,
                     "INSERT INTO orders VALUES (5, 'Edsger', 1, '2024-03-01', NULL)",
                     "UPDATE orders SET note = 'changed' WHERE id = 2",
                     "UPDATE orders SET id = 40 WHERE id = 4",
                     "DELETE FROM orders WHERE id = 1")
        manage("pdr-reflect")
        compare(source_db, dest_db, expected_ids=[2, 5, 40])

    with runner.step("admin pages render for a superuser"):
        code = textwrap.dedent("""
            from django.contrib.auth.models import User
            from django.test import Client
            from django.test.utils import setup_test_environment
            from django_pdr.models import Reflection
            setup_test_environment()
            client = Client()
            client.force_login(User.objects.get(username="admin"))
            r = Reflection.objects.get()
            for url in ["/admin/", "/admin/django_pdr/database/", "/admin/django_pdr/sourcetable/",
                        "/admin/django_pdr/reflection/", f"/admin/django_pdr/reflection/{r.pk}/change/",
                        "/admin/django_pdr/database/add/"]:
                response = client.get(url)
                print(response.status_code, url)
        """)
        out = manage("shell", "-c", code).stdout
        statuses = re.findall(r"^(\d{3}) (\S+)$", out, re.M)
        if len(statuses) != 6 or any(status != "200" for status, _ in statuses):
            raise Failure(f"admin pages did not all answer 200:\n{out}")

    with runner.step("pdr-export, then pdr-import --dry-run of the export"):
        exported = workdir / "pdr-config.json"
        manage("pdr-export", "--output", exported)
        config = json.loads(exported.read_text(encoding="utf-8"))
        names = [d["name"] for d in config["databases"]]
        if names != ["reporting", "shop"] or len(config["reflections"]) != 1:
            raise Failure(f"unexpected export: {config}")
        out = manage("pdr-import", exported, "--dry-run").stdout
        if "reflection(s): 0 created, 0 updated, 1 unchanged" not in out:
            raise Failure(f"unexpected import report: {out}")

    with runner.step("check --database default: W003 for a MySQL Database without PyMySQL"):
        manage("shell", "-c", "from django_pdr.models import Database; Database.objects.create("
                              "name='mariadb', kind='mysql', host='db', database='shop')")
        proc = manage("check", "--database", "default")
        output = proc.stdout + proc.stderr
        if "django_pdr.W003" not in output or "pip install 'django-pdr[mysql]'" not in output:
            raise Failure(f"expected django_pdr.W003 with the pip hint:\n{output}")
        print("    " + next(line for line in output.splitlines() if "W003" in line).strip()[:110])


def compare(source_db: Path, dest_db: Path, expected_ids):
    if not dest_db.exists():
        raise Failure(f"destination {dest_db} was not created")
    src, dst = source_rows(source_db, "orders"), source_rows(dest_db, "orders")
    if [row[0] for row in src] != expected_ids:
        raise Failure(f"the test's own source changes did not land as expected: {src}")
    if dst != src:  # values and SQLite storage classes
        raise Failure(f"destination differs from source:\n  source:      {src}\n  destination: {dst}")
    print(f"    {len(dst)} rows, equal to the source")


if __name__ == "__main__":
    sys.exit(main())
