import pytest

import graphnet as gn


@pytest.fixture(autouse=True)
def fresh_graph():
    """Each test starts with an empty default graph and the same seeds."""
    gn.reset_default_graph()
    gn.set_seed(0)
    yield
