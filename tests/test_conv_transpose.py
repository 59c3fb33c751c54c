"""gn.conv2d_transpose (conv2d's input gradient as a public op) and Keras's Conv2DTranspose: values and
gradients against PyTorch's conv_transpose2d (strides, explicit padding, output_padding, dilation,
groups, NHWC and NCHW) on every backend; "same" and "valid" output sizes and placement against
Keras's rule and ONNX's ConvTranspose with auto_pad; central differences; the errors."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from helpers import check_grad, run
from test_reliability import BACKENDS

pytestmark = pytest.mark.usefixtures("private_cache")

RNG = np.random.default_rng(17)
# (H, W, Cin, Cout, kernel, stride, torch padding, output_padding, dilation, groups)
TORCH_CASES = [(5, 6, 4, 3, 3, 2, 1, 1, 1, 1), (4, 4, 2, 6, 2, 2, 0, 0, 1, 2), (3, 5, 6, 4, 3, 1, 2, 0, 2, 2),
               (5, 5, 3, 2, 4, 3, 1, 2, 1, 1), (2, 3, 2, 2, 3, 2, 0, 1, 2, 1)]


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_transpose_equals_torch_with_gradients(backend, data_format):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for h, w, cin, cout, k, s, p, op, d, g in TORCH_CASES:
        x = RNG.normal(size=(2, cin, h, w))
        weight = RNG.normal(size=(cin, cout // g, k, k))  # torch's (Cin, Cout / groups, KH, KW)
        tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
        ref = F.conv_transpose2d(tx, tw, stride=s, padding=p, output_padding=op, groups=g, dilation=d)
        upstream = RNG.normal(size=ref.shape)
        gx, gw = torch.autograd.grad((ref * torch.tensor(upstream)).sum(), [tx, tw])
        to_fmt = (lambda a: a) if data_format == "NCHW" else (lambda a: np.transpose(a, (0, 2, 3, 1)))
        with gn.Graph():
            xp = gn.placeholder("x", (None,) + to_fmt(x).shape[1:], np.float64)
            wp = gn.placeholder("w", (k, k, cout // g, cin), np.float64)
            y = gn.conv2d_transpose(xp, wp, strides=s, padding=((p, p), (p, p)), output_padding=op, dilation_rate=d,
                                    groups=g, data_format=data_format)
            fetches = [y, *gn.gradients(gn.sum(y * to_fmt(upstream)), [xp, wp])]
            got = run(fetches, {"x": to_fmt(x), "w": np.transpose(weight, (2, 3, 1, 0))}, backend=backend)
        case = f"{(h, w, cin, cout, k, s, p, op, d, g)}"
        np.testing.assert_allclose(got[0], to_fmt(ref.detach().numpy()), rtol=1e-10, atol=1e-12, err_msg=case)
        np.testing.assert_allclose(got[1], to_fmt(gx.numpy()), rtol=1e-10, atol=1e-12, err_msg=case)
        np.testing.assert_allclose(got[2], np.transpose(gw.numpy(), (2, 3, 1, 0)), rtol=1e-10, atol=1e-12,
                                   err_msg=case)


def _keras_length(size, k, padding, output_padding, stride, dilation):
    """Keras's deconv_output_length."""
    k = k + (k - 1) * (dilation - 1)
    if output_padding is None:
        return size * stride + max(k - stride, 0) if padding == "valid" else size * stride
    pad = k // 2 if padding == "same" else 0
    return (size - 1) * stride + k - 2 * pad + output_padding


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_keras_sizes_and_same_placement_as_onnx_auto_pad(padding):
    """Keras's output sizes for every kernel, stride and output_padding below; "same" without
    output_padding places the output as ONNX's ConvTranspose with auto_pad SAME_UPPER (TensorFlow's
    "SAME") where the kernel is at least the stride, "valid" as auto_pad VALID (a kernel narrower
    than the stride: Keras's rows of zeros after)."""
    reference = pytest.importorskip("onnx.reference")
    from onnx import TensorProto, helper
    for k in (1, 2, 3, 4):
        for s in (1, 2, 3):
            for op in (None, *range(s)):
                x = RNG.normal(size=(1, 2, 5, 4))
                weight = RNG.normal(size=(k, k, 3, 2))
                want = tuple(_keras_length(n, k, padding, op, s, 1) for n in (5, 4))
                with gn.Graph():
                    if padding == "same" and any(-(-length // s) != n  # a "same" conv's output: ceil(length / s)
                                                 for length, n in zip(want, (5, 4))):
                        with pytest.raises(gn.ShapeError, match="which the strided conv maps to"):
                            gn.conv2d_transpose(x, weight, s, padding, op, data_format="NCHW")
                        continue  # (Keras fails there too: TensorFlow's conv maps that length elsewhere)
                    y = gn.conv2d_transpose(x, weight, s, padding, op, data_format="NCHW")
                    assert y.shape == (1, 3) + want, (k, s, op)
                    if op is not None or (padding == "same" and k < s):  # (ONNX pads negatively, TF not at all)
                        continue
                    got = run(y)
                node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[s, s],
                                        auto_pad="SAME_UPPER" if padding == "same" else "VALID")
                graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(v, TensorProto.DOUBLE, None)
                                                        for v in ("x", "w")],
                                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
                onnx_w = np.transpose(weight, (3, 2, 0, 1))  # ONNX's (Cin, Cout, KH, KW)
                (expected,) = reference.ReferenceEvaluator(helper.make_model(graph)).run(None, {"x": x, "w": onnx_w})
                rows, cols = expected.shape[2:]  # a "valid" kernel narrower than the stride: Keras adds zeros
                np.testing.assert_allclose(got[:, :, :rows, :cols], expected, rtol=1e-12, atol=1e-12,
                                           err_msg=f"k {k} s {s}")
                assert not got[:, :, rows:].any() and not got[:, :, :, cols:].any()


def test_gradients_match_central_differences():
    check_grad(lambda x, w: gn.conv2d_transpose(x, w, strides=2, padding="same"),
               [RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(3, 3, 2, 2))], shapes=[(None, 3, 2, 2), (3, 3, 2, 2)])


def test_keras_conv2d_transpose_layer():
    """Shapes and parameter counts as Keras prints them; the layer is conv2d_transpose plus its bias,
    and an autoencoder with it trains."""
    model = gn.Sequential([gn.layers.Input((8, 8, 3)), gn.layers.Conv2D(4, 3, strides=2, padding="same"),
                           gn.layers.Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu"),
                           gn.layers.Conv2DTranspose(2, 2, padding="valid", output_padding=None)])
    assert [layer.output_shape for layer in model.layers] == [(None, 4, 4, 4), (None, 8, 8, 3), (None, 9, 9, 2)]
    assert model.count_params() == (3 * 3 * 3 * 4 + 4) + (3 * 3 * 3 * 4 + 3) + (2 * 2 * 2 * 3 + 2)
    layer = model.layers[1]
    assert layer.get_config()["output_padding"] is None and "groups" not in layer.get_config()
    kernel, bias = (v.value for v in layer.weights)
    assert kernel.shape == (3, 3, 3, 4)  # Keras's (KH, KW, filters, Cin)
    x = RNG.normal(size=(2, 4, 4, 4)).astype(np.float32)
    sub = gn.Sequential([gn.layers.Input((4, 4, 4)), layer])
    want = run(gn.relu(gn.conv2d_transpose(x, kernel, 2, "same") + bias))
    np.testing.assert_allclose(sub.predict(x), want, rtol=1e-5, atol=1e-6)
    model.compile(gn.optim.Adam(lr=1e-2), "mse")
    images = RNG.uniform(size=(16, 8, 8, 3)).astype(np.float32)
    history = model.fit(images, RNG.uniform(size=(16, 9, 9, 2)).astype(np.float32), epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


# ---- bad input ------------------------------------------------------------------------------
def test_errors_name_the_op_and_the_line():
    x = gn.placeholder("x", (None, 4, 4, 3))
    for bad, words in [(lambda: gn.conv2d_transpose(x, np.ones((3, 3, 2, 5), np.float32)), "end in the input's 3"),
                       (lambda: gn.conv2d_transpose(x, np.ones((3, 3, 2, 3), np.float32), 2, "same", 2),
                        "output_padding must be"),
                       (lambda: gn.conv2d_transpose(x, np.ones((1, 1, 2, 3), np.float32), 1, ((2, 2), (0, 0))),
                        "leaves an output of 0x4"),
                       (lambda: gn.conv2d_transpose(x[:, 0], np.ones((3, 3, 2, 3), np.float32)), "4-D NHWC")]:
        with pytest.raises(gn.ShapeError) as info:
            bad()
        message = str(info.value)
        assert message.startswith("conv2d_transpose: ") and words in message and "test_conv_transpose.py" in message
