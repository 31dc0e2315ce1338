import pytest
from hypothesis import HealthCheck, settings

from tests.targets import make_target  # noqa: F401  (fixture)

# Generated tests (tests/test_fidelity_generated.py): "ci" (the default) runs a few
# examples from a fixed seed, so that a failure in CI reproduces; "deep" for long local
# runs: pytest --hypothesis-profile=deep
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
         HealthCheck.large_base_example]
settings.register_profile("ci", max_examples=10, derandomize=True, deadline=None, suppress_health_check=_SLOW,
                          database=None)
settings.register_profile("deep", max_examples=150, deadline=None, suppress_health_check=_SLOW)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _dispose_engines():
    """Engines, table descriptions and learned row sizes are kept per Database or
    Reflection pk; tests reuse pks (rolled back), so start clean."""
    from django_pdr.connections import dispose_all
    from django_pdr.engine import budget, describe

    def forget():
        dispose_all()
        describe.forget_descriptions()
        budget._LARGEST.clear()

    forget()
    yield
    forget()


_LAYERS = {"live", "browser", "docs", "packaging"}


def pytest_collection_modifyitems(items):
    """The test layers: a test without a server, browser, docs or packaging marker is a
    unit test (``scripts/test.sh -m unit`` runs that layer alone, in seconds)."""
    for item in items:
        if not _LAYERS & {mark.name for mark in item.iter_markers()}:
            item.add_marker(pytest.mark.unit)
