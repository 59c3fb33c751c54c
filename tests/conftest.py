import pytest

import graphnet as gn


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A module's own empty compile cache, so its compiles really exercise the code generators."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHNET_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def fresh_graph():
    """Each test starts with an empty default graph and the same seeds."""
    gn.reset_default_graph()
    gn.set_seed(0)
    yield
