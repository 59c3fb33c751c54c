"""The compiled-C reference points of `graphnet bench`: the C step trains exactly the grid's model."""
import platform
import shutil

import numpy as np
import pytest

from graphnet.bench import ceilings
from graphnet.bench.grid import build_grid_model
from graphnet.bench.peers import GRID, PEERS, GridConfig, PeerUnavailable, grid_data, grid_params

pytestmark = pytest.mark.skipif(shutil.which(ceilings.compiler()) is None,
                                reason=f"no C compiler ({ceilings.compiler()}) found")

x86_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                              reason="native/fma_peak.c is written for x86 AVX-512 or AVX2")
NARROW_WIDE = GridConfig("narrow-wide", (16, 64, 8), 32, "tanh", "mse")  # wide's activation and loss, small


@pytest.mark.parametrize("config", [GRID["tiny"], GRID["small"], NARROW_WIDE], ids=lambda c: c.name)
def test_c_step_trains_like_the_numpy_peer_and_graphnet(config, monkeypatch):
    monkeypatch.setitem(GRID, config.name, config)  # build_grid_model looks configurations up by name
    c_step = ceilings.CStep(config)
    peer = PEERS["numpy"](config)
    model = build_grid_model(config.name, backend="numpy")
    feeds = model.feeds(*grid_data(config))
    for _ in range(5):
        loss = c_step.step()
        np.testing.assert_allclose(loss, float(peer.step()), rtol=1e-5)
        np.testing.assert_allclose(loss, float(model.step(**feeds)[0]), rtol=1e-5)
    names = [f"{kind}{i}" for i in range(1, len(config.layers)) for kind in ("W", "b")]
    for name, ours in zip(names, c_step.params):
        np.testing.assert_allclose(ours, model.graph.variables[name].value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(c_step.params[0], grid_params(config)[0][0])  # Adam did move the weights


def test_c_step_is_left_out_above_its_flop_limit():
    assert GRID["large"].flops <= ceilings.C_STEP_MAX_FLOPS < GRID["wide"].flops
    with pytest.raises(PeerUnavailable, match="GFLOP per step"):
        ceilings.c_step(GRID["wide"])


@x86_only
def test_fma_kernel_runs_its_chains():
    """The kernel's sum is the recurrence it claims to run (acc <- 0.999999 acc + 1e-6 from acc = i, per
    chain, lane and thread); its FLOP count follows from the same sizes. (No timing here: the benchmark
    measures speed.)"""
    kernel = ceilings.FmaPeak(iterations=1000, threads=2)
    assert kernel.lanes in (8, 16)
    assert kernel.flops == 2 * kernel.lanes * kernel.chains * kernel.iterations * 2
    acc = np.arange(kernel.chains, dtype=np.float64)
    for _ in range(kernel.iterations):
        acc = 0.999999 * acc + 1e-6
    np.testing.assert_allclose(kernel.run(), 2 * kernel.lanes * acc.sum(), rtol=1e-4)
    calibrated = ceilings.FmaPeak.calibrated(threads=1, seconds=0.002)
    assert calibrated.threads == 1 and calibrated.iterations % 4096 == 0


@x86_only
def test_fma_peak_runs_one_thread_per_allowed_core():
    ceiling = ceilings.fma_peak(GRID["small"])
    assert ceiling.threads == str(ceilings.allowed_cores())
    assert ceiling.work > 1  # one timed call holds the FLOPs of many small steps


def test_compile_errors_name_the_compiler(monkeypatch):
    with pytest.raises(RuntimeError, match="error"):
        ceilings.compile_c("int broken( {", ["-O0"])
    monkeypatch.setenv("CC", "no-such-compiler-graphnet")
    with pytest.raises(PeerUnavailable, match="no C compiler"):
        ceilings.compile_c("int f(void) { return 0; }", ["-O0"])
