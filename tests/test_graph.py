"""The graph IR: interning, canonical hashing, source lines, networkx export, promotion of Python
values, default and explicit graphs, variables."""
import inspect
import os

import networkx as nx
import numpy as np
import pytest

import graphnet as gn
from graphnet.graph import structural_hash
from graphnet.program import Program

from helpers import run


def here(offset: int = 0) -> str:
    """The caller's file:line as graphnet reports it (relative to the working directory)."""
    frame = inspect.currentframe().f_back
    return f"{os.path.relpath(frame.f_code.co_filename)}:{frame.f_lineno + offset}"


def test_same_expression_is_one_node():
    x = gn.placeholder("x", (None, 3))
    a = gn.exp(x + 1.0) * 2.0
    b = gn.exp(x + 1.0) * 2.0
    assert a is b
    assert gn.exp(x) is not gn.tanh(x)
    assert x + 1.0 is not x + 2.0


def test_graph_without_interning_keeps_duplicates():
    with gn.Graph(intern=False) as g:
        x = gn.placeholder("x", (2,))
        assert gn.exp(x) is not gn.exp(x)
    assert len(g) == 3


def _build(graph: gn.Graph, scale: float = 2.0, activation=gn.tanh, width: int = 3):
    with graph:
        x = gn.placeholder("x", (None, width))
        w = gn.variable("w", np.ones((width, 2), np.float32))
        return activation(x @ w) * scale


def test_canonical_hash_is_stable_across_identical_graphs():
    g1, g2 = gn.Graph(), gn.Graph()
    with g2:
        gn.exp(gn.placeholder("unrelated", (4,)))  # shifts node ids in g2
    assert structural_hash([_build(g1)]) == structural_hash([_build(g2)])
    assert Program([_build(gn.Graph())]).hash() == Program([_build(gn.Graph())]).hash()


@pytest.mark.parametrize("change", [dict(scale=3.0), dict(scale=2.0000002), dict(activation=gn.sigmoid),
                                    dict(width=4)])
def test_canonical_hash_changes_with_structure(change):
    assert structural_hash([_build(gn.Graph())]) != structural_hash([_build(gn.Graph(), **change)])


def test_hash_ignores_variable_values():
    g1, g2 = gn.Graph(), gn.Graph()
    y1 = _build(g1)
    y2 = _build(g2)
    g2.variables["w"].assign(np.full((3, 2), 5.0))
    assert structural_hash([y1]) == structural_hash([y2])


def test_source_points_at_the_users_line():
    x = gn.placeholder("x", (None, 3)); where = here()  # noqa: E702
    assert x.source == where
    y = gn.mean(gn.softmax(x) * 2.0, axis=0); where = here()  # noqa: E702
    assert y.source == where
    assert all(n.source == where for n in gn.graph.ancestors([y]) if n is not x)
    assert "graphnet" not in y.source


def test_source_survives_compilation_and_gradients():
    x = gn.placeholder("x", (None, 3))
    y = gn.sum(gn.log(gn.sigmoid(x))); where = here()  # noqa: E702
    g = gn.gradients(y, x)
    assert g.source == where  # gradient nodes point at the forward op they come from
    fn = gn.compile(y, backend="numpy")
    assert {n.source for n in fn.program.nodes() if n.op.name != "placeholder"} == {where}


def test_to_networkx():
    x = gn.placeholder("x", (None, 3))
    y = gn.exp(x) + x
    gn.tanh(x)
    g = x.graph.to_networkx()
    assert g.number_of_nodes() == 4 and nx.is_directed_acyclic_graph(g)
    assert {n.op.name for n in g.successors(x)} == {"exp", "add", "tanh"}
    assert g.nodes[y]["op"] == "add" and g.nodes[y]["shape"] == (None, 3)
    sub = x.graph.to_networkx([y])
    assert sub.number_of_nodes() == 3
    assert sorted(d["index"] for _, _, d in sub.in_edges(y, data=True)) == [0, 1]


def test_python_numbers_and_arrays_become_constants():
    x = gn.placeholder("x", (None, 3))
    y = x * 2 + np.array([1.0, 2.0, 3.0])  # float64 array: weakly typed, takes x's float32
    assert y.dtype == np.float32 and y.shape == (None, 3)
    c = y.inputs[1]
    assert c.op.name == "constant" and c.dtype == np.float32
    z = np.ones(3) + x  # numpy defers to the node
    assert isinstance(z, gn.Node) and z.op.name == "add"
    assert gn.constant(1.5).dtype == np.float32
    assert gn.constant(np.array(1.5)).dtype == np.float64  # an explicit float64 array keeps its dtype
    assert gn.constant(3).dtype.kind == "i"
    np.testing.assert_allclose(run(y, {"x": np.zeros((2, 3), np.float32)}), [[1, 2, 3], [1, 2, 3]])


def test_integer_tensors_take_integer_constants():
    i = gn.placeholder("i", (None,), np.int32)
    assert (i + 1).dtype == np.int32
    assert run(i * 3 + 1, {"i": np.array([1, 2], np.int32)}).tolist() == [4, 7]


def test_default_graph_and_with_graph():
    outer = gn.get_default_graph()
    a = gn.placeholder("a", (2,))
    assert a.graph is outer
    with gn.Graph() as g:
        assert gn.get_default_graph() is g
        b = gn.placeholder("a", (2,))  # a name is per graph
        assert b.graph is g and gn.exp(b).graph is g
        with gn.Graph() as inner:
            assert gn.constant(1.0).graph is inner
        assert gn.get_default_graph() is g
    assert gn.get_default_graph() is outer
    assert gn.exp(b).graph is g  # a node's graph wins over the default
    assert gn.reset_default_graph() is not outer


def test_mixing_graphs_is_an_error():
    a = gn.placeholder("a", (2,))
    with gn.Graph():
        b = gn.placeholder("b", (2,))
    with pytest.raises(ValueError, match="another graph"):
        a + b


def test_duplicate_names_are_refused():
    gn.placeholder("x", (2,))
    with pytest.raises(ValueError, match="'x' already exists"):
        gn.placeholder("x", (3,))
    gn.variable("v", np.zeros(2))
    with pytest.raises(ValueError, match="'v' already exists"):
        gn.variable("v", np.zeros(2))


def test_variable_value_and_assign():
    v = gn.variable("v", np.array([1.0, 2.0], np.float32))
    assert v.trainable and v.dtype == np.float32 and v.shape == (2,)
    copy = v.value
    copy[0] = 99
    np.testing.assert_array_equal(v.value, [1.0, 2.0])
    fn = gn.compile(v * 2.0, backend="numpy")
    v.assign([3.0, 4.0])
    np.testing.assert_array_equal(fn(), [6.0, 8.0])
    with pytest.raises(ValueError, match="expected shape"):
        v.assign(np.zeros(3))
    with pytest.raises(TypeError, match="dtype"):
        v.assign(np.array(["a", "b"]))
    np.testing.assert_array_equal(v.value, [3.0, 4.0])
    assert not gn.variable("frozen", np.zeros(1), trainable=False).trainable
    with pytest.raises(TypeError, match="not a variable"):
        (v * 2.0).value


def test_variable_dtypes():
    assert gn.variable("a", 1.0).dtype == np.float32
    assert gn.variable("b", np.zeros(2)).dtype == np.float64
    assert gn.variable("c", [1, 2], dtype=np.float64).dtype == np.float64


def test_tensor_methods():
    x = gn.placeholder("x", (None, 2, 3))
    assert x.T.shape == (3, 2, None)
    assert x.sum(axis=1).shape == (None, 3)
    assert x.mean(axis=(0, 2), keepdims=True).shape == (1, 2, 1)
    assert x.max().shape == ()
    assert x.reshape(None, 6).shape == (None, 6) and x.reshape((-1, 6)).shape == (None, 6)
    with pytest.raises(gn.ShapeError):
        x.reshape(-1, 3)  # the batch dimension would become 2N
    assert x.name == "x" and x.ndim == 3
    X = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    np.testing.assert_allclose(run(x.mean(axis=(0, 2)), {"x": X}), X.mean(axis=(0, 2)))


def test_a_node_has_no_truth_value():
    x = gn.placeholder("x", (2,))
    with pytest.raises(TypeError, match="truth value"):
        bool(x > 0)
