"""A resync never shows an empty or partial mirror (issue 18, item 6): the rows load into a
shadow table and replace the destination's rows in one transaction at the end."""
import pytest
import sqlalchemy as sa
from django.test.utils import override_settings

from django_pdr import worker
from django_pdr.engine.runner import ReflectionRunner
from django_pdr.models import Reflection
from tests.targets import KINDS, rows, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

CREATE = {"mysql": "CREATE TABLE items (id int PRIMARY KEY, v varchar(20))",
          "postgresql": "CREATE TABLE items (id int PRIMARY KEY, v varchar(20))",
          "sqlite": "CREATE TABLE items (id int PRIMARY KEY, v varchar(20))"}


def count(engine, table="items"):
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


def tables(engine):
    return sorted(sa.inspect(engine).get_table_names())


def setup_pair(make_target, source_kind, dest_kind, n=95):
    source, dest = make_target(source_kind), make_target(dest_kind)
    source.execute(CREATE[source_kind], "INSERT INTO items VALUES " + ", ".join(f"({i}, 'v{i}')" for i in range(n)))
    reflection = Reflection(source=watch(source.model("src"), "items"), destination=dest.model("dst"),
                            destination_table="items")
    reflection.full_clean()
    reflection.save()
    return source, dest, reflection


def observe_chunks(monkeypatch, dest, seen, fail_after=None):
    """Record the destination's row count, read by another connection, after every load step."""
    original = ReflectionRunner.load_chunk_once

    def watched(self, src, dst, state, expected):
        new_state = original(self, src, dst, state, expected)
        seen.append((new_state["phase"], count(dest.engine)))
        if fail_after is not None and len(seen) >= fail_after:
            raise RuntimeError("worker killed mid-resync")
        return new_state

    monkeypatch.setattr(ReflectionRunner, "load_chunk_once", watched)


@pytest.mark.parametrize("dest_kind", KINDS)
@override_settings(PDR={"LOAD_CHUNK_SIZE": 10})
def test_resync_keeps_the_old_rows_visible_until_the_swap(make_target, monkeypatch, dest_kind):
    source, dest, reflection = setup_pair(make_target, "sqlite", dest_kind)
    assert not worker.run().failed
    assert count(dest.engine) == 95
    dest.execute("CREATE INDEX items_v ON items (v)")  # the table itself is kept, indexes and all

    # the source changes while no event is captured (a restored backup, say): a resync mends it
    source.execute(*[f"INSERT INTO items VALUES ({i}, 'new{i}')" for i in range(95, 130)],
                   "DELETE FROM items WHERE id < 20", "UPDATE items SET v = 'changed' WHERE id = 50")
    Reflection.objects.filter(pk=reflection.pk).update(resync_requested=True)
    seen = []
    observe_chunks(monkeypatch, dest, seen)
    assert not worker.run().failed
    loading = [n for phase, n in seen if phase == "load"]
    assert len(loading) >= 10 and set(loading) == {95}, seen  # never empty, never partial
    assert seen[-1] == ("stream", 110)
    assert rows(dest.engine, "items", ["id"]) == rows(source.engine, "items", ["id"])
    assert not [t for t in tables(dest.engine) if t.startswith("pdr_shadow")]
    assert "items_v" in {i["name"] for i in sa.inspect(dest.engine).get_indexes("items")}


@pytest.mark.parametrize("dest_kind", KINDS)
@override_settings(PDR={"LOAD_CHUNK_SIZE": 10})
def test_interrupted_resync_leaves_the_old_rows_and_resumes(make_target, monkeypatch, dest_kind):
    source, dest, reflection = setup_pair(make_target, "sqlite", dest_kind)
    assert not worker.run().failed
    source.execute("DELETE FROM items WHERE id >= 60")  # captured, but the resync reloads anyway
    Reflection.objects.filter(pk=reflection.pk).update(resync_requested=True)
    seen = []
    observe_chunks(monkeypatch, dest, seen, fail_after=3)
    assert worker.run().failed  # killed after three chunks
    assert count(dest.engine) == 95  # the mirror as it was
    assert [t for t in tables(dest.engine) if t.startswith("pdr_shadow")]  # the shadow, partly loaded
    monkeypatch.undo()
    assert not worker.run().failed  # resumes from the checkpoint
    assert rows(dest.engine, "items", ["id"]) == rows(source.engine, "items", ["id"])
    assert count(dest.engine) == 60
    assert not [t for t in tables(dest.engine) if t.startswith("pdr_shadow")]


@override_settings(PDR={"LOAD_CHUNK_SIZE": 10})
def test_first_load_into_an_empty_table_needs_no_shadow(make_target, monkeypatch):
    source, dest, reflection = setup_pair(make_target, "postgresql", "postgresql", n=35)
    seen = []
    observe_chunks(monkeypatch, dest, seen)
    assert not worker.run().failed
    assert [n for _, n in seen] == [10, 20, 30, 35]  # in place: no copy at the end
    assert not [t for t in tables(dest.engine) if t.startswith("pdr_shadow")]
