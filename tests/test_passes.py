"""Each graph pass on a small program, checked by its text before and after (source comments
dropped, so the tests do not depend on line numbers) and by running both versions."""
import re

import numpy as np
import pytest

import graphnet as gn
from graphnet.passes import (DEFAULT_PASSES, cse, dce, fold_constants, run_passes, run_pipeline, simplify,
                             stabilize, strip_dropout, verify)
from graphnet.program import Program

from helpers import run


def text(prog: Program) -> str:
    return "\n".join(re.sub(r"  # .*$", "", line) for line in prog.to_text().splitlines())


def lines(*rows: str) -> str:
    return "\n".join(rows)


def same_values(before: Program, after: Program, feeds: dict) -> None:
    want = gn.compile(before.fetches, backend="numpy", passes=[])(**feeds)
    got = gn.compile(after.fetches, backend="numpy", passes=[])(**feeds)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


X = "%0 = placeholder[x]() {shape=(None, 3), dtype=float32} : float32 (N, 3)"


@pytest.fixture
def x():
    return gn.placeholder("x", (None, 3))


# ---- dce / cse ----------------------------------------------------------------------------------
def test_dce_keeps_only_what_outputs_need(x):
    y = gn.exp(x)
    gn.tanh(x) * 2.0  # dead: nothing fetches it
    prog = Program([y])
    assert len(x.graph) == 5
    out = dce(prog)
    assert len(out.fetches[0].graph) == 2
    assert text(out) == lines(X, "%1 = exp(%0) : float32 (N, 3)", "fetch %1")


def test_dce_keeps_update_values_and_targets(x):
    v = gn.variable("v", np.zeros(3, np.float32))
    gn.exp(v)  # dead
    out = dce(Program([gn.sum(x)], [(v, v + 1.0)]))
    assert text(out) == lines(X, "%1 = variable[v]() : float32 (3,)",
                              "%2 = sum(%0) {axes=(0, 1), keepdims=False} : float32 ()",
                              "%3 = constant() {value=1.} : float32 ()", "%4 = add(%1, %3) : float32 (3,)",
                              "fetch %2", "update %1 <- %4")


def test_cse_merges_structural_duplicates():
    with gn.Graph(intern=False):
        a = gn.placeholder("a", (2,))
        y = gn.exp(a) + gn.exp(a) * gn.exp(a)
        prog = Program([y])
    assert text(prog).count("exp(") == 3
    out = cse(prog)
    assert text(out) == lines(
        "%0 = placeholder[a]() {shape=(2,), dtype=float32} : float32 (2,)",
        "%1 = exp(%0) : float32 (2,)",
        "%2 = multiply(%1, %1) : float32 (2,)",
        "%3 = add(%1, %2) : float32 (2,)",
        "fetch %3")
    same_values(prog, out, {"a": np.array([0.5, -1.0], np.float32)})


def test_cse_merges_equal_constants_but_not_different_ones():
    with gn.Graph(intern=False):
        a = gn.placeholder("a", (2,))
        prog = Program([a * 2.0 + a * 2.0 + a * 3.0])
    assert text(cse(prog)).count("constant") == 2


# ---- constant folding ---------------------------------------------------------------------------
def test_fold_evaluates_constant_subexpressions(x):
    two = gn.constant(2.0)
    prog = Program([x * (gn.exp(two * 0.5) + 1.0)])
    out = dce(fold_constants(prog))
    body = text(out).splitlines()
    assert body[0] == X
    assert re.fullmatch(r"%1 = constant\(\) \{value=3\.718282\d*\} : float32 \(\)", body[1])
    assert body[2:] == ["%2 = multiply(%0, %1) : float32 (N, 3)", "fetch %2"]
    same_values(prog, out, {"x": np.ones((2, 3), np.float32)})


def test_fold_leaves_batch_sized_and_large_results(x):
    big = gn.broadcast_to(gn.constant(1.0), (100, 100))
    batched = gn.broadcast_to(gn.constant(1.0), (None, 3))
    prog = Program([gn.sum(big) + gn.sum(x * batched)])
    assert text(fold_constants(prog)).count("broadcast_to") == 2


def test_fold_never_folds_dropout():
    step = gn.constant(np.int32(0))
    y = gn.ops.graph_dropout(gn.constant(np.ones(4, np.float32)), step, rate=0.5, seed=1)
    assert "dropout" in text(fold_constants(Program([y])))


# ---- simplify -----------------------------------------------------------------------------------
IDENTITIES = {
    "x*1": lambda x: x * 1.0, "1*x": lambda x: 1.0 * x, "x+0": lambda x: x + 0.0, "0+x": lambda x: 0.0 + x,
    "x-0": lambda x: x - 0.0, "x/1": lambda x: x / 1.0, "x**1": lambda x: x ** 1.0, "--x": lambda x: -(-x),
    "x*ones": lambda x: x * np.ones(3, np.float32),
    "T(T(x))": lambda x: gn.transpose(gn.transpose(x)), "cast(x, same)": lambda x: gn.ops.apply("cast", [x],
                                                                                                  dtype=x.dtype),
    "reshape(x, same)": lambda x: gn.ops.apply("reshape", [x], shape=(None, 3)),
}


@pytest.mark.parametrize("name", IDENTITIES)
def test_simplify_removes_identity(x, name):
    prog = Program([gn.exp(IDENTITIES[name](x))])
    assert text(simplify(prog)) == lines(X, "%1 = exp(%0) : float32 (N, 3)", "fetch %1")


def test_simplify_square_becomes_multiply(x):
    out = simplify(Program([x ** 2.0]))
    assert text(out) == lines(X, "%1 = multiply(%0, %0) : float32 (N, 3)", "fetch %1")


def test_simplify_composes_transposes():
    a = gn.placeholder("a", (2, 3, 4))
    out = simplify(Program([gn.transpose(gn.transpose(a, (1, 2, 0)), (1, 2, 0))]))
    assert text(out).splitlines()[1:] == ["%1 = transpose(%0) {perm=(2, 0, 1)} : float32 (4, 2, 3)", "fetch %1"]
    A = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(run(out.fetches[0], {"a": A}), A.transpose(1, 2, 0).transpose(1, 2, 0))


def test_simplify_collapses_reshapes(x):
    out = simplify(Program([gn.reshape(gn.reshape(x, (None, 1, 3)), (None, 3, 1))]))
    assert text(out).splitlines()[1:] == ["%1 = reshape(%0) {shape=(None, 3, 1)} : float32 (N, 3, 1)", "fetch %1"]


def test_simplify_keeps_x_times_zero(x):
    """x*0 is NaN for x = NaN or inf, so it must stay."""
    prog = Program([x * 0.0])
    assert text(simplify(prog)) == text(prog)
    got = run(x * 0.0, {"x": np.array([[np.nan, np.inf, 1.0]], np.float32)})
    assert np.isnan(got[0, 0]) and np.isnan(got[0, 1]) and got[0, 2] == 0


@pytest.mark.parametrize("make", [lambda x: 0.0 - x, lambda x: 1.0 / x, lambda x: x ** 0.5,
                                  lambda x: x * np.ones((2, 1, 3), np.float32), lambda x: x + np.zeros((1, 1, 3))])
def test_simplify_keeps_non_identities(x, make):
    prog = Program([make(x)])
    assert text(simplify(prog)) == text(prog)


# ---- stabilize ----------------------------------------------------------------------------------
def test_stabilize_log_sigmoid(x):
    out = stabilize(Program([gn.log(gn.sigmoid(x))]))
    assert [line.split(" = ")[1].split("(")[0] for line in text(dce(out)).splitlines()[1:-1]] == \
        ["negative", "softplus", "negative"]
    big = np.array([[-1e4, 0.0, 1e4]], np.float32)
    np.testing.assert_allclose(run(out.fetches[0], {"x": big}, passes=[]), [[-1e4, -np.log(2), 0.0]])


def test_stabilize_log_one_minus_sigmoid(x):
    out = dce(stabilize(Program([gn.log(1.0 - gn.sigmoid(x))])))
    assert text(out) == lines(X, "%1 = softplus(%0) : float32 (N, 3)", "%2 = negative(%1) : float32 (N, 3)",
                              "fetch %2")


def test_stabilize_log_softmax(x):
    out = dce(stabilize(Program([gn.log(gn.softmax(x))])))
    assert text(out) == lines(X, "%1 = log_softmax(%0) {axis=1} : float32 (N, 3)", "fetch %1")


@pytest.mark.parametrize("make, head", [
    (lambda x: gn.log(gn.clip(gn.sigmoid(x), 1e-7, 1 - 1e-7)), "softplus"),
    (lambda x: gn.log(1.0 - gn.clip(gn.sigmoid(x), 1e-7, 1 - 1e-7)), "softplus"),
    (lambda x: gn.log(gn.clip(1.0 - gn.sigmoid(x), 1e-7, 1.0)), "softplus"),
    (lambda x: gn.log(gn.clip(gn.softmax(x), 1e-7, 1.0)), "log_softmax"),
])
def test_stabilize_sees_through_clipping(x, make, head):
    body = text(dce(stabilize(Program([make(x)]))))
    assert head in body and "sigmoid" not in body and "clip" not in body and " log(" not in body


def test_stabilize_turns_bce_on_probabilities_into_the_logits_form(x):
    y = gn.placeholder("y", (None, 3))
    p = gn.clip(gn.sigmoid(x), 1e-7, 1 - 1e-7)
    loss = -gn.mean(y * gn.log(p) + (1.0 - y) * gn.log(1.0 - p))
    fn = gn.compile(loss, backend="numpy")
    assert "sigmoid" not in text(fn.program)
    Z = np.array([[-200.0, 0.0, 200.0]], np.float32)
    Y = np.array([[1.0, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(fn(x=Z, y=Y), (200 + np.log(2) + 200) / 3, rtol=1e-6)


def test_stabilize_leaves_other_logs(x):
    prog = Program([gn.log(gn.exp(x) + 1.0)])
    assert text(stabilize(prog)) == text(prog)


# ---- the pipeline -------------------------------------------------------------------------------
def test_pipeline_records_every_pass(x):
    prog, records = run_pipeline(Program([gn.log(gn.sigmoid(x * 1.0))]))
    assert [r.name for r in records] == ["input"] + [p.__name__ for p in DEFAULT_PASSES]
    assert "sigmoid" in records[0].text and "sigmoid" not in records[-1].text
    assert records[-1].text == prog.to_text() and records[-1].nodes == len(prog.nodes())
    assert all(r.seconds >= 0 for r in records)


def test_pipeline_keeps_the_users_source_lines(x):
    y = gn.log(gn.sigmoid(x))
    line = y.source
    prog, _ = run_pipeline(Program([y]))
    assert "test_passes.py:" in line
    assert all(n.source == line for n in prog.nodes() if n.op.name != "placeholder")


def test_pipeline_outside_training_strips_dropout(x):
    y = gn.dropout(x, 0.5)
    assert "dropout" in text(run_pipeline(Program([y]))[0])
    assert "dropout" not in text(run_pipeline(Program([y]), training=False)[0])
    assert "dropout" not in text(strip_dropout(Program([y])))


def test_verify_rejects_a_pass_that_changes_an_output(x):
    def bad(prog: Program) -> Program:
        return Program([gn.cast(f, np.float64) for f in prog.fetches])

    with pytest.raises(AssertionError, match="changed"):
        run_pipeline(Program([gn.exp(x)]), [bad])
    run_pipeline(Program([gn.exp(x)]), [bad], check=False)


def test_verify_rejects_a_node_whose_shape_disagrees_with_its_rule(x):
    y = gn.exp(x)
    y.shape = (None, 4)
    with pytest.raises(AssertionError, match="rule gives"):
        verify(Program([y]))


def test_verify_rejects_a_cycle(x):
    y = gn.exp(x)
    z = gn.tanh(y)
    y.inputs = (z,)  # a pass that rewires a node into its own ancestry
    with pytest.raises(AssertionError, match="cycle"):
        verify(Program([z]))
    with pytest.raises(AssertionError, match="cycle"):
        verify(Program([gn.exp(x), z]))  # an output beside the cycle does not hide it


def test_default_pipeline_prints_each_record_only_when_asked(x):
    """A compile never reads its records' text: the default passes' records print it when asked."""
    prog, records = run_pipeline(Program([gn.log(gn.sigmoid(x * 1.0))]))
    assert all(r.snapshot is None for r in records)
    assert [r.text for r in records] == [r.program.to_text() for r in records]
    assert "sigmoid" in records[0].text and "sigmoid" not in records[-1].text


def test_custom_passes_are_recorded_as_they_ran(x):
    """A custom pass may change the program it is given: each record is a snapshot."""
    def regions_in_place(prog: Program) -> Program:
        prog.regions[prog.fetches[0]] = "mine"
        return prog

    prog, records = run_pipeline(Program([gn.exp(x)]), [regions_in_place])
    assert "[mine]" not in records[0].text and "[mine]" in records[1].text


def test_records_without_text_say_so(x):
    prog = Program([gn.exp(x) * 1.0])
    _, records = run_passes(prog, [simplify], verify, lambda p: len(p.nodes()), text="none")
    assert [r.name for r in records] == ["input", "simplify"] and records[1].nodes == 2
    with pytest.raises(ValueError, match="simplify was made without its text"):
        records[1].text
    with pytest.raises(ValueError, match="'snapshot', 'lazy' or 'none'"):
        run_passes(prog, [simplify], verify, lambda p: len(p.nodes()), text="eager")
