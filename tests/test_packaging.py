"""The wheel, installed into a fresh virtualenv and a new Django project (tests/fresh_project.py),
with this interpreter and this environment's Django version; then the wheel's contents and metadata.

Part of the normal suite (~30 s; needs pip's index or cache).  Deselect with ``-m "not packaging"``.
"""
import os
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import django
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_pdr"

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def fresh_project(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fresh-project")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fresh_project.py"), "--python", sys.executable,
         "--django", f"Django=={django.get_version()}", "--workdir", str(workdir)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=600)
    return proc, workdir


def test_fresh_project_follows_the_readme_and_replicates(fresh_project):
    proc, _ = fresh_project
    assert proc.returncode == 0, f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert "PASSED: fresh project works" in proc.stdout


@pytest.fixture(scope="module")
def wheel(fresh_project):
    _, workdir = fresh_project
    wheels = list((workdir / "dist").glob("django_pdr-*.whl"))
    if len(wheels) != 1:
        pytest.fail(f"no wheel built: {fresh_project[0].stdout}{fresh_project[0].stderr}")
    with zipfile.ZipFile(wheels[0]) as archive:
        names = set(archive.namelist())
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode("utf-8"))
    return names, metadata


def test_wheel_ships_every_template_static_file_and_migration(wheel):
    names, _ = wheel
    wanted = {str(p.relative_to(ROOT)) for folder in ("templates", "static", "migrations")
              for p in (PACKAGE / folder).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert {n for n in wanted if n.startswith("django_pdr/templates/")}
    assert {n for n in wanted if n.startswith("django_pdr/static/")}
    assert "django_pdr/migrations/0001_initial.py" in wanted
    assert wanted - names == set()
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/")]


def test_wheel_metadata(wheel):
    _, metadata = wheel
    assert metadata["Name"] == "django-pdr"
    assert metadata["Requires-Python"] == ">=3.10"
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    base = {(r.name, r.specifier) for r in requires if r.marker is None}
    assert base == {("Django", SpecifierSet(">=4.2")), ("django-ace", SpecifierSet()),
                    ("SQLAlchemy", SpecifierSet(">=2.0,<3")), ("psycopg2-binary", SpecifierSet()),
                    ("pytz", SpecifierSet()), ("django-pgcrypto", SpecifierSet())}
    assert any(r.name == "PyMySQL" and r.marker.evaluate({"extra": "mysql"}) for r in requires if r.marker)
    assert set(metadata.get_all("Provides-Extra")) >= {"mysql", "test"}
    classifiers = set(metadata.get_all("Classifier"))
    for version in ("4.2", "5.2", "6.0"):
        assert f"Framework :: Django :: {version}" in classifiers
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "Quick start in your project" in metadata.get_payload()


def test_quickstart_doc_repeats_the_readme_quick_start():
    """docs/quickstart.md is README's quick start, explained: every README snippet appears in it."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from fresh_project import code_blocks, quick_start
    finally:
        sys.path.remove(str(ROOT / "tests"))
    section = quick_start()
    doc = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    snippets = code_blocks(section, "python") + code_blocks(section, "sh")
    assert len(snippets) >= 3
    for snippet in snippets:
        assert snippet.strip() in doc, snippet
    for command in re.findall(r"`((?:pip install|python manage\.py) [^`]+)`", section):
        assert command in doc, command
