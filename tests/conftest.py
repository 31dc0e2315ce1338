import pytest

from tests.targets import make_target  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def _dispose_engines():
    """Engines are cached per Database pk; tests reuse pks, so start clean."""
    from django_pdr.connections import dispose_all

    dispose_all()
    yield
    dispose_all()
