"""Function.run_steps: a compiled step over whole datasets, many steps per call. It must give exactly
what calling the function batch by batch gives (losses, fetches, final weights, dropout masks), and
refuse bad input before any step runs. The LLVM functions run with the C loop (codegen/llvm/_call.c's
FastCall.run_steps) and with the Python loop it falls back to."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
import codegen.llvm.call as call_path

NATIVE = call_path.native
N, FEATURES, CLASSES = 50, 6, 4


@pytest.fixture(params=["native", "python"])
def implementation(request, monkeypatch):
    """Which loop the LLVM functions compiled in the test run: the C one, or the Python fallback."""
    if request.param == "native" and NATIVE is None:
        pytest.skip("the C call path was not built (no C compiler at install time)")
    monkeypatch.setattr(call_path, "native", NATIVE if request.param == "native" else None)
    return request.param


def _step(backend: str, optimizer: str = "adam", dropout: bool = False, fetch_dict: bool = False,
          summed: bool = False, fetch_logits: bool = False):
    """A two-layer classifier's training step (fetches: loss and a metric; `summed`: instead three
    scalars, float32 and float64; `fetch_logits`: the logits too) and its weight variables."""
    rng = np.random.default_rng(0)
    with gn.Graph():
        x = gn.placeholder("x", (None, FEATURES))
        labels = gn.placeholder("labels", (None,), np.int32)
        w1 = gn.variable("w1", rng.standard_normal((FEATURES, 8)).astype(np.float32) * 0.5)
        w2 = gn.variable("w2", rng.standard_normal((8, CLASSES)).astype(np.float32) * 0.5)
        h = gn.relu(x @ w1)
        if dropout:
            h = gn.dropout(h, 0.5, seed=3)
        logits = h @ w2
        loss = gn.losses.softmax_cross_entropy(logits, labels)
        accuracy = gn.mean(gn.abs(logits))  # a second scalar fetch, as a metric is
        opt = gn.optim.Adam(lr=0.05) if optimizer == "adam" else gn.optim.SGD(lr=0.1)
        fetches = {"loss": loss, "accuracy": accuracy} if fetch_dict else [loss, accuracy]
        if summed:
            fetches = [loss, gn.cast(accuracy, np.float64) / 3.0, gn.mean(logits) * -1e-3]
        if fetch_logits:
            fetches.append(logits)
        step = gn.compile(fetches, updates=opt.minimize(loss), backend=backend)
    return step, [w1, w2]


def _data(n: int = N):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n).astype(np.int32)


def _batch_by_batch(step, x, labels, batch_size, order=None, steps=None):
    """The reference: the function called on each batch in turn."""
    order = np.arange(len(x)) if order is None else order
    batches = -(-len(order) // batch_size)
    steps = batches if steps is None else steps
    results = []
    for k in range(steps):
        rows = order[(k % batches) * batch_size:(k % batches + 1) * batch_size]
        results.append(step(x=x[rows], labels=labels[rows]))
    return results


def _weights(variables):
    return [v.value for v in variables]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [10, 16])  # 50 = 5 x 10; 50 = 3 x 16 + 2 (a short last batch)
def test_run_steps_matches_the_batch_loop_bit_for_bit(implementation, optimizer, shuffle, batch_size):
    x, labels = _data()
    order = np.random.default_rng(7).permutation(N) if shuffle else None
    ref_step, ref_vars = _step("llvm", optimizer)
    expected = _batch_by_batch(ref_step, x, labels, batch_size, order)
    step, variables = _step("llvm", optimizer)
    loss, accuracy = step.run_steps({"x": x, "labels": labels}, batch_size, order=order)
    assert loss.shape == accuracy.shape == (len(expected),) and loss.dtype == np.float32
    np.testing.assert_array_equal(loss, [r[0] for r in expected])
    np.testing.assert_array_equal(accuracy, [r[1] for r in expected])
    for got, want in zip(_weights(variables), _weights(ref_vars)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_dropout_masks_advance_once_per_step(implementation, optimizer):
    x, labels = _data()
    order = np.random.default_rng(8).permutation(N)
    ref_step, ref_vars = _step("llvm", optimizer, dropout=True)
    expected = _batch_by_batch(ref_step, x, labels, 16, order, steps=2)
    expected += _batch_by_batch(ref_step, x, labels, 16, order)
    step, variables = _step("llvm", optimizer, dropout=True)
    first = step.run_steps({"x": x, "labels": labels}, 16, order=order, steps=2)
    second = step.run_steps({"x": x, "labels": labels}, 16, order=order)
    np.testing.assert_array_equal(np.concatenate([first[0], second[0]]), [r[0] for r in expected])
    for got, want in zip(_weights(variables), _weights(ref_vars)):
        np.testing.assert_array_equal(got, want)


def test_steps_beyond_one_pass_start_over_and_keep_the_structure(implementation):
    x, labels = _data()
    order = np.random.default_rng(9).permutation(N)[:37]  # a subset of the samples, 37 = 2 x 16 + 5
    ref_step, ref_vars = _step("llvm", fetch_dict=True)
    expected = _batch_by_batch(ref_step, x, labels, 16, order, steps=8)
    step, variables = _step("llvm", fetch_dict=True)
    out = step.run_steps({"x": x, "labels": labels}, 16, order=order, steps=8)
    assert set(out) == {"loss", "accuracy"} and out["loss"].shape == (8,)
    np.testing.assert_array_equal(out["loss"], [r["loss"] for r in expected])
    for got, want in zip(_weights(variables), _weights(ref_vars)):
        np.testing.assert_array_equal(got, want)
    # afterwards ordinary calls still work (the fast path re-points the inputs), at any batch size
    np.testing.assert_array_equal(step(x=x[:3], labels=labels[:3])["loss"],
                                  ref_step(x=x[:3], labels=labels[:3])["loss"])


def test_the_c_loop_is_used(monkeypatch):
    if NATIVE is None:
        pytest.skip("the C call path was not built")
    # an OpenCL function earlier in this process sends every host step through the coherent path
    # (Variable.any_mirrors); this step's variables have no device copies
    monkeypatch.setattr(gn.graph.Variable, "any_mirrors", False)
    step, _ = _step("llvm")
    x, labels = _data()
    calls = []
    native_run = type(step.executable).run_steps
    monkeypatch.setattr(type(step.executable), "run_steps",
                        lambda self, *a: (calls.append(a[4]), native_run(self, *a))[1])
    step.run_steps({"x": x, "labels": labels}, 16)
    assert calls == [3, 1]  # the three full batches in one native call, the short one in another


def test_numpy_backend_agrees_with_llvm_within_rounding():
    x, labels = _data()
    order = np.random.default_rng(10).permutation(N)
    results = {}
    for backend in ("numpy", "llvm"):
        step, variables = _step(backend, dropout=True)
        results[backend] = step.run_steps({"x": x, "labels": labels}, 16, order=order, steps=6), _weights(variables)
    (np_out, np_w), (llvm_out, llvm_w) = results["numpy"], results["llvm"]
    np.testing.assert_allclose(np_out[0], llvm_out[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(np_w, llvm_w):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _bad_inputs(x, labels):
    yield {"x": x, "labels": labels[:-1]}, {}, ValueError, "samples"  # mismatched lengths
    yield {"x": x.astype(np.float64), "labels": labels}, {}, TypeError, "float32"  # wrong dtype
    yield {"x": x, "labels": labels.astype(np.int64)}, {}, TypeError, "int32"
    yield {"x": np.asfortranarray(x), "labels": labels}, {}, ValueError, "contiguous"
    yield {"x": x[::2], "labels": labels[::2]}, {}, ValueError, "contiguous"
    yield {"x": x[:, :5].copy(), "labels": labels}, {}, ValueError, "must be whole datasets"
    yield {"x": x}, {}, ValueError, "placeholders"  # a missing feed
    yield {"x": x.tolist(), "labels": labels}, {}, TypeError, "numpy array"
    yield {"x": x, "labels": labels}, {"order": np.array([0, 1, N])}, IndexError, str(N)
    yield {"x": x, "labels": labels}, {"order": np.array([3, -1, 2])}, IndexError, "-1"
    yield {"x": x, "labels": labels}, {"order": np.arange(N, dtype=np.float64)}, TypeError, "integer"
    yield {"x": x, "labels": labels}, {"batch_size": 0}, ValueError, "batch_size"
    yield {"x": x, "labels": labels}, {"steps": -1}, ValueError, "steps"
    yield {"x": x[:0], "labels": labels[:0]}, {}, ValueError, "empty"


@pytest.mark.parametrize("case", range(14))
def test_bad_inputs_raise_and_change_nothing(implementation, case):
    x, labels = _data()
    feeds, options, error, words = list(_bad_inputs(x, labels))[case]
    step, variables = _step("llvm", dropout=True)
    step(x=x[:16], labels=labels[:16])  # every cache warm
    before = _weights(variables)
    counter = [v.attrs["var"].read().copy() for v in step.program.variables if v.dtype == np.int32]
    with pytest.raises(error, match=words):
        step.run_steps(feeds, options.pop("batch_size", 16), **options)
    for got, want in zip(_weights(variables), before):
        np.testing.assert_array_equal(got, want)
    assert [v.attrs["var"].read() for v in step.program.variables if v.dtype == np.int32] == counter


def test_the_c_loop_checks_its_own_arguments():
    """FastCall.run_steps is the memory-safety boundary: it refuses what the Python checks refuse."""
    if NATIVE is None:
        pytest.skip("the C call path was not built")
    step, variables = _step("llvm")
    x, labels = _data()
    before = _weights(variables)
    fast, backend = step._call, step.executable
    names = step.feeds.names  # sorted: labels, x
    assert names == ["labels", "x"]
    outs = tuple(np.empty((3,), np.float32) for _ in range(2))
    cases = [
        ((labels, x), np.array([0, 1, N] + list(range(45)), np.int64), IndexError),
        ((labels, x), np.array([-5] + list(range(47)), np.int64), IndexError),
        ((labels, x), np.arange(48, dtype=np.int32), TypeError),
        ((labels, x), np.arange(40, dtype=np.int64), ValueError),  # 3 batches of 16 run past the order
        ((labels, x.astype(np.float64)), None, TypeError),
        ((labels[:-1], x), None, ValueError),
        ((labels, np.asfortranarray(x)), None, ValueError),
        ((labels, x[:, :5].copy()), None, ValueError),
    ]
    for sources, order, error in cases:
        with pytest.raises(error):
            backend.run_steps(fast, sources, order, 0, 3, 16, outs)
    with pytest.raises(ValueError):  # outputs too short for the steps
        backend.run_steps(fast, (labels, x), None, 0, 3, 16, tuple(np.empty((2,), np.float32) for _ in range(2)))
    with pytest.raises(RuntimeError):  # the arena laid out for another batch
        fast.run_steps((labels, x), None, 0, 3, 10, outs)
    for got, want in zip(_weights(variables), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batched_fetches_come_back_row_by_row(implementation, shuffle):
    """A fetch whose first dimension is the batch: each step's rows in step order (a short last batch,
    and steps past one pass over the data included), as the batch loop gives them."""
    x, labels = _data()
    order = np.random.default_rng(3).permutation(N) if shuffle else None
    results = []
    for run_steps in (False, True):
        with gn.Graph():
            xp = gn.placeholder("x", (None, FEATURES))
            w = gn.variable("w", np.linspace(-1, 1, FEATURES * 2, dtype=np.float32).reshape(FEATURES, 2))
            out = gn.tanh(xp @ w)
            loss = gn.mean(out ** 2)
            step = gn.compile([loss, out], updates=gn.optim.SGD(lr=0.1).minimize(loss))
        if run_steps:
            results.append(step.run_steps({"x": x}, 16, order=order, steps=6))
        else:
            rows = np.arange(N) if order is None else order
            batches = [step(x=x[rows[(k % 4) * 16:(k % 4 + 1) * 16]]) for k in range(6)]
            results.append([np.array([b[0] for b in batches]), np.concatenate([b[1] for b in batches])])
    (loss_ref, out_ref), (loss, out) = results
    assert out.shape == (16 * 3 + 2 + 16 * 2, 2)
    np.testing.assert_array_equal(loss, loss_ref)
    np.testing.assert_array_equal(out, out_ref)


def test_a_fetch_whose_batch_dimension_is_not_first_is_refused():
    with gn.Graph():
        x = gn.placeholder("x", (None, 2))
        w = gn.variable("w", np.ones((2, 2), np.float32))
        loss = gn.mean((x @ w) ** 2)
        step = gn.compile([loss, gn.transpose(x @ w)], updates=gn.optim.SGD(lr=0.1).minimize(loss))
    with pytest.raises(ValueError, match="not its first"):
        step.run_steps({"x": np.ones((8, 2), np.float32)}, 4)
    np.testing.assert_array_equal(w.value, np.ones((2, 2)))


def test_a_placeholder_without_batch_dimension_is_fed_to_every_step(implementation):
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((20, 3)).astype(np.float32)
    results = []
    for run_steps in (False, True):
        with gn.Graph():
            x = gn.placeholder("x", (None, 3))
            scale = gn.placeholder("scale", (3,))
            w = gn.variable("w", np.ones((3, 1), np.float32))
            loss = gn.mean(((x * scale) @ w) ** 2)
            step = gn.compile(loss, updates=gn.optim.SGD(lr=0.01).minimize(loss))
        s = np.array([1.0, 0.5, 2.0], np.float32)
        if run_steps:
            losses = step.run_steps({"x": xs, "scale": s}, 8)
        else:
            losses = np.array([step(x=xs[i:i + 8], scale=s) for i in range(0, 20, 8)])
        results.append((losses, w.value))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


# ---- Model.fit through run_steps ----------------------------------------------------------------------

def _fit(native: bool, dropout: float = 0.0, optimizer: str = "adam", stream=None, callbacks=(), **fit_args):
    """A fresh, identically seeded model fitted with the native loop or batch by batch: (history, weights)."""
    gn.reset_default_graph()
    gn.set_seed(0)
    layers = [gn.layers.Input((FEATURES,)), gn.layers.Dense(8, activation="relu")]
    layers += [gn.layers.Dropout(dropout)] if dropout else []
    model = gn.Sequential(layers + [gn.layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"])
    model._native_fit = native
    x, labels = _data(fit_args.pop("n", N))
    history = model.fit(x, labels, callbacks=list(callbacks), **{"verbose": 0, "epochs": 3, **fit_args})
    return history.history, model.get_weights()


def _assert_same_fit(a, b):
    (history_a, weights_a), (history_b, weights_b) = a, b
    assert history_a == history_b  # exact floats
    for wa, wb in zip(weights_a, weights_b):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("options", [
    {"batch_size": 16},  # shuffled, a short last batch
    {"batch_size": 10, "shuffle": False},
    {"batch_size": 16, "shuffle": False, "validation_split": 0.2},
    {"batch_size": 16, "steps_per_epoch": 7},  # past the last batch, starting over
    {"batch_size": 8, "dropout": 0.5},
    {"batch_size": 8, "dropout": 0.5, "optimizer": "sgd", "n": 203},
], ids=str)
def test_fit_is_the_same_with_the_native_loop(implementation, options):
    _assert_same_fit(_fit(True, **options), _fit(False, **options))


def test_fit_uses_run_steps_unless_a_callback_has_a_batch_hook(monkeypatch):
    monkeypatch.setattr(gn.graph.Variable, "any_mirrors", False)  # as in test_the_c_loop_is_used
    calls = []
    for name in ("_run_checked_steps", "_sum_checked_steps"):
        method = getattr(gn.Function, name)
        monkeypatch.setattr(gn.Function, name, lambda self, *a, _name=name, _method=method, **k: (
            calls.append((_name[1:4], a[3])), _method(self, *a, **k))[1])
    _fit(True, batch_size=16, epochs=2)
    # per epoch, one native call summing the full batches, then one summing the short batch
    native = [("sum", 3), ("sum", 1)] * 2
    assert calls == native
    ends = []
    calls.clear()
    hooked = _fit(True, batch_size=16, epochs=2, callbacks=[gn.callbacks.LambdaCallback(
        on_batch_end=lambda batch, logs: ends.append((batch, logs["loss"])))])
    assert calls == [] and [b for b, _ in ends] == [0, 1, 2, 3] * 2
    _assert_same_fit(hooked, _fit(False, batch_size=16, epochs=2))
    weights = np.random.default_rng(5).uniform(0, 2, N)
    weighted = _fit(True, batch_size=16, epochs=2, sample_weight=weights)  # sample weights go natively too
    assert calls == native
    _assert_same_fit(weighted, _fit(False, batch_size=16, epochs=2, sample_weight=weights))


class _Bar:
    """A stand-in for tqdm recording what the progress logger shows."""
    shown: list = []

    def __init__(self, total, **kwargs):
        self.total = total

    def set_description_str(self, text, refresh=True):
        self.text = text

    def update(self, n):
        _Bar.shown.append(self.text)

    def close(self):
        pass


class _Terminal:
    def __init__(self):
        self.lines = []

    def isatty(self):
        return True

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


def test_the_progress_bar_moves_batch_by_batch_in_chunks(monkeypatch):
    import graphnet.callbacks as callbacks
    monkeypatch.setattr(callbacks, "_tqdm", lambda: _Bar)
    shown, chunks = {}, []
    run_steps = gn.Function._run_checked_steps
    monkeypatch.setattr(gn.Function, "_run_checked_steps", lambda self, *a, **k: (chunks.append(a[3]), run_steps(self, *a, **k))[1])
    for native in (True, False):
        _Bar.shown = []
        monkeypatch.setattr("sys.stdout", _Terminal())
        _fit(native, batch_size=4, epochs=2, verbose=1, n=203)
        shown[native] = list(_Bar.shown)
    assert len(shown[True]) == 2 * 51 and shown[True] == shown[False]  # every batch's running logs
    assert len(chunks) > 2 and chunks[0] == 1  # chunked, the first chunk one step long


# ---- the plan of steps, the gather, the epoch sums ------------------------------------------------------

@pytest.mark.parametrize("dtype, width", [(np.bool_, 1), (np.bool_, 2), (np.bool_, 3), (np.float32, 1),
                                          (np.float32, 2), (np.float32, 3), (np.float32, 4), (np.float32, 5),
                                          (np.float32, 6), (np.float32, 8), (np.float32, 10), (np.float32, 16),
                                          (np.float64, 8), (np.int32, 64), (np.float32, 67)])
def test_the_c_gather_copies_rows_of_every_size(implementation, dtype, width):
    """Rows of 1 to 268 bytes (the C loop copies the common small sizes with a constant size, others
    with memcpy): a batched fetch of the fed rows themselves comes back in the order's order."""
    rng = np.random.default_rng(width)
    data = rng.standard_normal((41, width)) > 0 if dtype is np.bool_ else \
        (rng.standard_normal((41, width)) * 100).astype(dtype)
    with gn.Graph():
        x = gn.placeholder("x", (None, width), dtype)
        step = gn.compile(gn.cast(x, np.float64) + 0.0)
    order = rng.permutation(41)
    np.testing.assert_array_equal(step.run_steps({"x": data}, 8, order=order), data[order].astype(np.float64))
    np.testing.assert_array_equal(step.run_steps({"x": data}, 8, order=order[:13], steps=5),
                                  data[np.concatenate([order[:13], order[:13], order[:8]])].astype(np.float64))


def test_the_step_plan_takes_the_batches_in_turn():
    """`_StepPlan` against the definition: step k takes batch (start + k) mod batches."""
    from graphnet.function import _StepPlan
    for length in (1, 5, 16, 17, 50):
        for batch_size in (1, 3, 16, 64):
            batches = -(-length // batch_size)
            sizes = [min(batch_size, length - j * batch_size) for j in range(batches)]
            for start in range(batches):
                for steps in (0, 1, 2, batches - start, batches + 1, 3 * batches + 2):
                    plan = _StepPlan(length, batch_size, start, steps)
                    taken = [(start + k) % batches for k in range(steps)]
                    got = [j for first, count, size in plan.segments() for j in range(first, first + count)]
                    assert got == taken
                    for first, count, size in plan.segments():
                        assert all(sizes[j] == size for j in range(first, first + count))
                        assert count == 1 or size == batch_size  # a stretch is of full batches
                    assert plan.rows == sum(sizes[j] for j in taken)
                    assert plan.sizes() == list(dict.fromkeys(sizes[j] for j in taken))
    assert _StepPlan(50, 16, 1, None).steps == 3  # the rest of the pass


def test_an_order_of_any_integer_type_is_taken():
    step, _ = _step("llvm")
    x, labels = _data()
    order = np.random.default_rng(4).permutation(N)
    results = [step.run_steps({"x": x, "labels": labels}, 16, order=o, steps=3)[0]
               for o in (order.astype(np.uint64), order.astype(np.int32), order[::-1][::-1], list(order))]
    fresh, _ = _step("llvm")
    want = [fresh.run_steps({"x": x, "labels": labels}, 16, order=order, steps=3)[0] for _ in range(4)]
    np.testing.assert_array_equal(np.concatenate(results), np.concatenate(want))
    with pytest.raises(IndexError, match="-3"):
        step.run_steps({"x": x, "labels": labels}, 16, order=np.array([1, -3, 2], np.int64))
    with pytest.raises(IndexError, match=str(2 ** 63)):
        step.run_steps({"x": x, "labels": labels}, 16, order=np.array([1, 2 ** 63], np.uint64))


def test_the_epoch_sums_are_the_batch_loops_additions():
    """fit's sums over a run_steps call: s + v0*size0 + v1*size1 ..., in float64, in step order, from
    the running sum so far (bit for bit what the batch-by-batch loop adds)."""
    from graphnet.model import _PYTHON_SUM_STEPS, _batch_sizes, _final_sums, _running_sums
    rng = np.random.default_rng(6)
    long = (8 * (_PYTHON_SUM_STEPS + 9), 8, 2, _PYTHON_SUM_STEPS + 5)  # _final_sums' numpy path
    for n, batch_size, first, count in [(50, 16, 0, 4), (50, 16, 1, 2), (48, 16, 0, 3), (7, 10, 0, 1), (203, 8, 3, 22),
                                        long]:
        sizes = _batch_sizes(n, batch_size, first, count)
        want_sizes = [min(batch_size, n - j * batch_size) for j in range(first, first + count)]
        np.testing.assert_array_equal(np.broadcast_to(sizes, (count,)), want_sizes)
        values = [rng.standard_normal(count).astype(np.float32), np.full(count, -0.0, np.float32)]
        for start in ([0.0, 0.0], [1.0 / 3.0, 0.0], [-2.5e7, -0.0]):
            running = _running_sums(start, values, sizes)
            final = _final_sums(start, values, sizes)
            for s, v, r, last in zip(start, values, running, final):
                expected = []
                for value, size in zip(v, want_sizes):
                    s = s + float(value) * size
                    expected.append(s)
                assert [float(x) for x in r] == expected
                assert [np.signbit(x) for x in r] == [np.signbit(x) for x in expected]
                assert last == expected[-1] and np.signbit(last) == np.signbit(expected[-1])


def test_the_c_loop_takes_the_step_lock_itself_and_releases_it_on_errors():
    """FastCall.try_run_steps (LLVMBackend.run_steps' path where the arena is laid out already) runs
    the steps as the batch loop does, runs nothing where the arena is laid out for another batch
    (False), and releases the step lock when the steps raise."""
    if NATIVE is None or not hasattr(NATIVE.FastCall, "try_run_steps"):
        pytest.skip("the C call path was not built")
    import threading
    x, labels = _data()
    (step, variables), (reference, _) = _step("llvm"), _step("llvm")
    for fn in (step, reference):  # one step each: the arenas laid out for batches of 16
        fn(x=x[:16], labels=labels[:16])
    fast = step._call
    before = _weights(variables)
    outs = tuple(np.empty((3,), np.float32) for _ in range(2))
    assert fast.try_run_steps((labels, x), None, 0, 3, 10, outs) is False
    with pytest.raises(IndexError):
        fast.try_run_steps((labels, x), np.array([-5] + list(range(47)), np.int64), 0, 3, 16, outs)
    for got, want in zip(_weights(variables), before):
        np.testing.assert_array_equal(got, want)
    taken = []

    def take() -> None:  # from another thread: free only if the error released it
        lock = step.step_lock.lock
        taken.append(lock.acquire(timeout=5))
        if taken[-1]:
            lock.release()
    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    assert taken == [True]
    assert fast.try_run_steps((labels, x), None, 0, 3, 16, outs) is True
    want = _batch_by_batch(reference, x[:48], labels[:48], 16)
    np.testing.assert_array_equal(outs[0], np.array([w[0] for w in want], np.float32))
    np.testing.assert_array_equal(outs[1], np.array([w[1] for w in want], np.float32))



@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size, start, steps", [(7, 0, 7), (7, 2, 3), (16, 0, 3), (1, 5, 40), (16, 3, 1),
                                                     (7, 7, 1)])
def test_the_native_sums_are_the_stacked_values_summed_bit_for_bit(implementation, shuffle, batch_size, start, steps,
                                                                   monkeypatch):
    """Function._sum_checked_steps (the C loop adding each step's fetches times the batch's size) gives
    bit for bit `_final_sums` of `_run_checked_steps`' stacked values and trains the same, on full
    batches and on the short last batch alone; without the C loop it runs nothing and returns None."""
    from graphnet.model import _batch_sizes, _final_sums
    monkeypatch.setattr(gn.graph.Variable, "any_mirrors", False)  # as in test_the_c_loop_is_used
    x, labels = _data()
    order = np.random.default_rng(3).permutation(N) if shuffle else None
    (step, variables), (reference, reference_variables) = _step("llvm", summed=True), _step("llvm", summed=True)
    for sums in ([0.0, 0.0, 0.0], [1.0 / 3.0, -2.5e7, -0.0]):
        got = step._sum_checked_steps((labels, x), batch_size, order, steps, start, sums)
        if implementation == "python":
            assert got is None
            return
        want = _final_sums(sums, reference._run_checked_steps((labels, x), batch_size, order, steps, start=start),
                           _batch_sizes(N, batch_size, start, steps))
        assert got == want and [np.signbit(v) for v in got] == [np.signbit(v) for v in want]
        for a, b in zip(_weights(variables), _weights(reference_variables)):
            np.testing.assert_array_equal(a, b)


def test_the_native_sums_run_nothing_where_the_c_loop_does_not_take_them():
    """A short batch among full ones, a wrap-around among the steps, or a fetch that is not one number:
    None, and no step runs (the caller runs `_run_checked_steps`); the C loop refuses sums it cannot make."""
    if NATIVE is None:
        pytest.skip("the C call path was not built")
    x, labels = _data()
    step, variables = _step("llvm", summed=True)
    batched, batched_variables = _step("llvm", summed=True, fetch_logits=True)
    before = _weights(variables)
    for batch_size, start, steps in [(16, 0, 4), (16, 2, 2), (7, 6, 2), (16, 0, 0), (16, 3, 2), (10, 5, 1)]:
        assert step._sum_checked_steps((labels, x), batch_size, None, steps, start, [0.0] * 3) is None
    assert batched._sum_checked_steps((labels, x), 16, None, 3, 0, [0.0] * 4) is None
    for got, want in zip(_weights(variables), before):
        np.testing.assert_array_equal(got, want)
    before = _weights(batched_variables)
    backend, fast = batched.executable, batched._call
    with pytest.raises(ValueError, match="not one float32 or float64 number"):
        backend.run_steps(fast, (labels, x), None, 0, 3, 16, np.zeros(4))
    for sums in (np.zeros(4, np.float32), np.zeros((4, 1)), [0.0] * 4):
        with pytest.raises(TypeError, match="float64 array of sums"):
            backend.run_steps(fast, (labels, x), None, 0, 3, 16, sums)
    with pytest.raises(ValueError, match="one output per fetch"):
        step.executable.run_steps(step._call, (labels, x), None, 0, 3, 16, np.zeros(2))
    for got, want in zip(_weights(batched_variables), before):
        np.testing.assert_array_equal(got, want)
