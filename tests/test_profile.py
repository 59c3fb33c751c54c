"""Function.profile / `graphnet profile`: one timing per native kernel of the step, matrix-product FLOPs,
and a model left exactly as it was (profiling runs real training steps, then restores the variables)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphnet as gn
from graphnet.cli import main
from graphnet.bench.grid import build_grid_model
from graphnet.bench.peers import GRID, grid_data

pytestmark = pytest.mark.usefixtures("private_cache")


def _small():
    model = build_grid_model("small", backend="llvm")
    return model, model.feeds(*grid_data(GRID["small"]))


def test_one_time_per_kernel_in_execution_order_with_gemm_flops():
    model, feeds = _small()
    prof = model.step.profile(feeds, repeats=3)
    lp = model.step.executable.lp
    assert [k.name for k in prof.kernels] == [k.name for k in lp.kernels]
    assert all(k.seconds >= 0 for k in prof.kernels) and prof.step > 0 and prof.batch == 64
    by_name = {k.name: k for k in prof.kernels}
    first_layer = next(k for k in lp.kernels if k.reduce is not None and k.reduce.contraction is not None)
    assert by_name[first_layer.name].flops == 2 * 64 * 128 * 64  # batch x hidden x inputs, a multiply-add each
    assert all(by_name[k.name].flops is None for k in lp.kernels if k.reduce is None)
    assert all(k.nodes and k.sources for k in prof.kernels)
    table = prof.table(top=3)
    assert len(re.findall(r"^\| k\d+_", table, re.M)) == 3 and "the 3 slowest" in table


def test_profiling_leaves_the_model_as_it_was():
    """A profiled model and an unprofiled twin train on identically afterwards, bit for bit."""
    (model, feeds), (twin, _) = _small(), _small()
    before = [v.attrs["var"].read() for v in model.step.program.variables]
    model.step.profile(feeds, repeats=2)
    after = [v.attrs["var"].read() for v in model.step.program.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    for _ in range(3):
        np.testing.assert_array_equal(model.step(**feeds)[0], twin.step(**feeds)[0])


def test_feeds_are_checked_and_other_backends_refused():
    model, feeds = _small()
    with pytest.raises(ValueError, match="expected shape"):
        model.step.profile({**feeds, "x": feeds["x"][:, :3]})
    with pytest.raises(ValueError, match="repeats"):
        model.step.profile(feeds, repeats=0)
    with gn.Graph():
        x = gn.placeholder("x", (None, 2))
        for kwargs in ({"backend": "numpy"}, {"backend": "llvm", "check_numerics": True}):
            fn = gn.compile(x * 2.0, **kwargs)
            with pytest.raises(TypeError, match="llvm backend"):
                fn.profile({"x": np.ones((2, 2), np.float32)})


def test_the_command_prints_the_table(capsys):
    assert main(["profile", "--config", "tiny", "--repeats", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "| kernel | us | share | GFLOP/s | of peak |" in out and "| k0_" in out


def test_convolution_kernels_report_their_useful_flops():
    """A conv kernel's GFLOP/s counts BENCHMARKS.md's 2 x output elements x taps for the forward op and
    both gradients, not its domain (which, for the input gradient, also counts the taps that fall on
    the padding)."""
    n, (h, w, c), (k, f) = 4, (9, 9, 2), (3, 5)
    with gn.Graph():
        x = gn.placeholder("x", (None, h, w, c))
        filters = gn.variable("w", np.random.default_rng(0).normal(size=(k, k, c, f)).astype(np.float32))
        hidden = gn.variable("h", np.ones((1, 1, f, f), np.float32))
        y = gn.conv2d(gn.conv2d(x, filters), hidden)  # the first conv's input gradient is not needed, the second's is
        loss = gn.mean(y * y)
        step = gn.compile(loss, updates=gn.optim.SGD(0.1).minimize(loss), backend="llvm")
    prof = step.profile({"x": np.ones((n, h, w, c), np.float32)}, repeats=1)
    ho = h - k + 1
    useful = {"conv2d": [2 * n * ho * ho * k * k * c * f, 2 * n * ho * ho * f * f],
              "conv2d_input_grad": [2 * n * ho * ho * f * f], "conv2d_filter_grad": [2 * n * ho * ho * k * k * c * f,
                                                                                     2 * n * ho * ho * f * f]}
    def op(name: str) -> str | None:
        return next((o for o in ("conv2d_input_grad", "conv2d_filter_grad", "conv2d") if f"_{o}" in name), None)
    for o, counts in useful.items():
        assert sorted(t.flops for t in prof.kernels if op(t.name) == o) == sorted(counts), o


def test_the_command_profiles_a_convolutional_net(capsys):
    assert main(["profile", "--config", "lenet", "--repeats", "1", "--threads", "1", "--top", "4"]) == 0
    out = capsys.readouterr().out
    assert "lenet (batch 64)" in out and "FMA peak" in out
    rows = [line for line in out.splitlines() if re.match(r"\| k\d+_", line)]
    assert len(rows) == 4 and any("conv2d" in r and re.search(r"\| \d+% \|", r) for r in rows)
