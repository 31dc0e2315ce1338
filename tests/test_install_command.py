"""``manage.py pdr-install``: installs are explicit; the worker only checks."""
import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_pdr.models import Reflection, SourceTable
from tests.targets import rows

pytestmark = [pytest.mark.django_db, pytest.mark.live]


def install(*args, **options):
    out = io.StringIO()
    call_command("pdr-install", *args, stdout=out, verbosity=1, **options)
    return out.getvalue()


def check():
    """(exit code, what --check printed)."""
    out = io.StringIO()
    try:
        call_command("pdr-install", check=True, stdout=out, verbosity=1)
    except CommandError:
        return 1, out.getvalue()
    return 0, out.getvalue()


def test_install_check_dry_run_and_the_worker_that_only_checks(make_target, settings):
    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    st = SourceTable(database=source.model("src"), table="t")
    st.full_clean()
    st.save()  # saved in code, not installed
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    with pytest.raises(CommandError, match="Capture is not installed on .* run manage.py pdr-install"):
        call_command("pdr-reflect", verbosity=0)
    assert check() == (1, "src: t: not installed\n")
    printed = install(dry_run=True)
    assert "not installed" in printed and "CREATE TABLE IF NOT EXISTS" in printed and "ENABLE ALWAYS" in printed
    assert check()[0] == 1  # a dry run changes nothing
    assert "installed (not installed)" in install()
    assert check() == (0, "")
    call_command("pdr-reflect", verbosity=0)
    assert rows(dest.engine, "t", ["id"]) == [{"id": 1, "v": "a"}]

    # other settings make the installed capture outdated: the worker says so, never reinstalls
    settings.PDR = {"NOTIFY": False}
    code, printed = check()
    assert code == 1 and "outdated" in printed
    source.execute("INSERT INTO t VALUES (2, 'b')")
    with pytest.raises(CommandError, match="Capture on .* is outdated .* run manage.py pdr-install"):
        call_command("pdr-reflect", verbosity=0)
    assert "installed (outdated" in install()
    call_command("pdr-reflect", verbosity=0)  # replaced in place: same incarnation, no reload
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1, 2]
    assert Reflection.objects.get().rows_applied == 2
