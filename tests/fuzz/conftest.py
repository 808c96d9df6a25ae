import pytest


@pytest.fixture(scope="session")
def seeds(tmp_path_factory):
    """The fuzz seeds (tests/fuzz/seeds.py), built once per session."""
    from fuzz.seeds import build

    return build(tmp_path_factory.mktemp("fuzz-seeds"))
