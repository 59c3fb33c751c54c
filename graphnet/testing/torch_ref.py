"""PyTorch float64 autograd as a second, independent reference: a spec interpreted op by op in torch,
its loss differentiated by torch.autograd and trained by torch.optim (graphnet follows PyTorch's
formulas and conventions: ties share gradients, clamp's gradient is 1 on the boundary).

An op without an entry in TORCH_OPS is not compared with torch (the spec's note says which).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import numpy as np

import graphnet as gn

from ..ops.elementwise import GELU_C, GELU_K
from .spec import Spec, build, concrete, float_outputs, resolve_attrs


class Unsupported(Exception):
    """The spec uses something the torch interpreter does not model."""


def _ops() -> dict[str, Callable]:
    import torch
    import torch.nn.functional as F

    def reduce(fn):
        return lambda x, axes, keepdims, out: x if not axes else fn(x, dim=tuple(axes), keepdim=keepdims)

    def gelu(x, approximate, out):
        """torch's gelu; the tanh form as x sigmoid(2u), graphnet's way of writing the same function: torch's
        0.5 x (1 + tanh(u)) cancels to zero in the negative tail (-1e-162 at x = -17 becomes -0.0)."""
        if approximate != "tanh":
            return F.gelu(x)
        return x * torch.sigmoid(2 * GELU_C * (x + GELU_K * x * x * x))

    def mean(x, axes=(), keepdims=False, out=None):
        return x if not axes else x.mean(dim=tuple(axes), keepdim=keepdims)

    def prod(x, axes, keepdims, out):  # torch.prod reduces one axis at a time
        for a in sorted(axes, reverse=True):
            x = torch.prod(x, dim=a, keepdim=True)
        return x.reshape(out) if axes else x

    def bce(p, y):
        p = torch.clamp(p, 1e-7, 1 - 1e-7)
        return torch.mean(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)))

    def one_hot(labels, depth, dtype):  # graphnet's: ids outside [0, depth) give all-zero rows
        return (labels.long()[..., None] == torch.arange(depth)).to(dtype)

    def softmax_ce(z, labels):
        return -torch.sum(one_hot(labels, z.shape[-1], z.dtype) * torch.log_softmax(z, -1), -1)

    def nchw(x, data_format):  # (contiguous: torch's CPU conv gradients refuse strided views)
        return x.permute(0, 3, 1, 2).contiguous() if data_format == "NHWC" else x.contiguous()

    def back(y, data_format):
        return y.permute(0, 2, 3, 1) if data_format == "NHWC" else y

    def padded(x, padding, value=0.0):
        (top, bottom), (left, right) = padding
        return F.pad(x, (left, right, top, bottom), value=value)

    def conv(x, w, strides, padding, dilations, groups):
        """NCHW x, torch's (cout, cin / groups, kh, kw) filter (graphnet's is (kh, kw, cin / groups, cout))."""
        return F.conv2d(padded(x, padding), w, stride=tuple(strides), dilation=tuple(dilations), groups=groups)

    def conv2d(x, w, strides, padding, dilations, groups, data_format, out):
        return back(conv(nchw(x, data_format), w.permute(3, 2, 0, 1).contiguous(), strides, padding, dilations,
                         groups), data_format)

    def conv2d_input_grad(dy, w, input_size, strides, padding, dilations, groups, data_format, out):
        """The gradient of the conv at an image of input_size, by torch.autograd (create_graph: it is
        differentiable again in dy and w)."""
        x = torch.zeros((dy.shape[0], w.shape[2] * groups, *input_size), dtype=dy.dtype, requires_grad=True)
        y = conv(x, w.permute(3, 2, 0, 1).contiguous(), strides, padding, dilations, groups)
        (dx,) = torch.autograd.grad(y, x, nchw(dy, data_format), create_graph=True)
        return back(dx, data_format)

    def conv2d_filter_grad(x, dy, kernel_size, strides, padding, dilations, groups, data_format, out):
        x, dy = nchw(x, data_format), nchw(dy, data_format)
        w = torch.zeros((dy.shape[1], x.shape[1] // groups, *kernel_size), dtype=x.dtype, requires_grad=True)
        y = conv(x, w, strides, padding, dilations, groups)
        (dw,) = torch.autograd.grad(y, w, dy, create_graph=True)
        return dw.permute(2, 3, 1, 0)

    def max_pool2d(x, ksize, strides, padding, dilations, data_format, out):
        """Each window's maximum as torch.amax over the unfolded windows, whose gradient (unlike
        F.max_pool2d's, which picks one element) is shared evenly by ties, as graphnet's."""
        x = padded(nchw(x, data_format), padding, -math.inf)
        n, c = x.shape[:2]
        windows = F.unfold(x.reshape(n * c, 1, *x.shape[2:]), tuple(ksize), dilation=tuple(dilations),
                           stride=tuple(strides))
        height, width = (out[1:3] if data_format == "NHWC" else out[2:4])
        return back(windows.amax(dim=1).reshape(n, c, height, width), data_format)

    def max_pool2d_grad(x, y, dy, ksize, strides, padding, dilations, data_format, out):
        """Each window's dy shared evenly by its elements equal to the window's y (graphnet's rule,
        written out: unfolded windows, then F.fold adding the shares of overlapping windows)."""
        x = padded(nchw(x, data_format), padding, -math.inf)
        n, c, height, width = x.shape
        geometry = dict(kernel_size=tuple(ksize), dilation=tuple(dilations), stride=tuple(strides))
        windows = F.unfold(x.reshape(n * c, 1, height, width), **geometry)
        ties = (windows == nchw(y, data_format).reshape(n * c, 1, -1)).to(x.dtype)
        count = ties.sum(dim=1, keepdim=True)
        share = nchw(dy, data_format).reshape(n * c, 1, -1) / torch.where(count > 0, count, 1.0) * ties
        dx = F.fold(share, (height, width), **geometry).reshape(n, c, height, width)
        (top, bottom), (left, right) = padding
        return back(dx[:, :, top:height - bottom, left:width - right], data_format)

    def clamped(indices, size):  # graphnet's index rule: negative ones wrap once, then clamp into the axis
        i = indices.long()
        return torch.clamp(torch.where(i < 0, i + size, i), 0, size - 1)

    def take(x, indices, axis, out):
        at = clamped(indices, x.shape[axis])
        return torch.index_select(x, axis, at.reshape(-1)).reshape(out)

    def scatter_add(updates, indices, axis, size, out):  # index_add_: duplicates summed
        lead, trail = updates.shape[:axis], updates.shape[axis + indices.ndim:]
        flat = updates.reshape(*lead, indices.numel(), *trail)
        return torch.zeros(out, dtype=updates.dtype).index_add(axis, clamped(indices, out[axis]).reshape(-1), flat)

    def pad(x, pads, value, out):
        """`value` around and between the elements: x's element k of an axis at lo + k (interior + 1)."""
        at = torch.meshgrid(*[torch.arange(d) * (i + 1) + lo for d, (lo, _, i) in zip(x.shape, pads)], indexing="ij")
        return torch.full(out, value, dtype=x.dtype).index_put(at, x)

    unary = {"negative": torch.neg, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs,
             "sign": torch.sign, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
             "softplus": lambda x: torch.logaddexp(torch.zeros_like(x), x), "stop_gradient": lambda x: x.detach(),
             "selu": F.selu, "silu": F.silu, "log1p": torch.log1p, "square": torch.square, "rsqrt": torch.rsqrt,
             "hard_sigmoid": lambda x: torch.clamp(x / 6 + 0.5, 0, 1),  # F.hardsigmoid's gradient: float32's 1/6
             "expm1": torch.expm1, "erf": torch.erf, "floor": torch.floor, "ceil": torch.ceil, "round": torch.round}
    binary = {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul, "divide": torch.div,
              "power": torch.pow, "maximum": torch.maximum, "minimum": torch.minimum, "less": torch.lt,
              "less_equal": torch.le, "greater": torch.gt, "greater_equal": torch.ge, "equal": torch.eq,
              "not_equal": torch.ne, "matmul": torch.matmul, "batch_matmul": torch.matmul, "mod": torch.remainder}
    table: dict[str, Callable] = {k: (lambda f: lambda x, out: f(x))(f) for k, f in unary.items()}
    table.update({k: (lambda f: lambda a, b, out: f(a, b))(f) for k, f in binary.items()})
    table.update({
        "leaky_relu": lambda x, alpha, out: F.leaky_relu(x, alpha),
        "elu": lambda x, alpha, out: F.elu(x, alpha),
        "gelu": gelu,
        "clip": lambda x, lo, hi, out: torch.clamp(x, lo, hi),
        "cast": lambda x, dtype, out: x.to(torch_dtype(dtype)),
        "where": lambda c, a, b, out: torch.where(c, a, b),
        "transpose": lambda x, perm, out: x.permute(tuple(perm)) if perm else x,
        "reshape": lambda x, shape, out: x.reshape(out),
        "broadcast_to": lambda x, shape, out: x.expand(out),
        "softmax": lambda x, axis, out: torch.softmax(x, axis),
        "log_softmax": lambda x, axis, out: torch.log_softmax(x, axis),
        "one_hot": lambda labels, depth, dtype, out: one_hot(labels, depth, torch_dtype(dtype)),
        "sum": reduce(torch.sum),
        "max": reduce(torch.amax),
        "min": reduce(torch.amin),
        "prod": prod,
        "cumsum": lambda x, axis, reverse, out: (torch.cumsum(x.flip(axis), axis).flip(axis) if reverse
                                                 else torch.cumsum(x, axis)),
        "flip": lambda x, axes, out: x.flip(tuple(axes)) if axes else x,
        "concat": lambda *xs, axis, out: torch.cat(xs, axis),
        "dropout": lambda x, step, offset, rate, seed, row, out: x,  # outside training (train mode is unsupported)
        "api:mean": mean,
        "api:mse": lambda p, t, out: torch.mean((p - t) ** 2),
        "api:bce_logits": lambda z, y, out: torch.mean(F.softplus(z, threshold=1e9) - z * y),
        "api:bce": lambda p, y, out: bce(p, y),
        "api:softmax_ce": lambda z, labels, out: softmax_ce(z, labels),
        "api:matmul_t": lambda a, b, out: a @ b.T,
        "conv2d": conv2d,
        "conv2d_input_grad": conv2d_input_grad,
        "conv2d_filter_grad": conv2d_filter_grad,
        "max_pool2d": max_pool2d,
        "max_pool2d_grad": max_pool2d_grad,
        "argmax": lambda x, axis, out: torch.argmax(x, dim=axis),  # the first of ties, as numpy
        "argmin": lambda x, axis, out: torch.argmin(x, dim=axis),
        "take": take,
        "pad": pad,
        "scatter_add": scatter_add,
    })
    return table


_TABLE: dict[str, Callable] | None = None


def table() -> dict[str, Callable]:
    global _TABLE
    if _TABLE is None:
        _TABLE = _ops()
    return _TABLE


def torch_dtype(dtype: Any):
    import torch
    return getattr(torch, np.dtype(dtype).name)


def unsupported(spec: Spec) -> str | None:
    """Why torch cannot check this spec, or None."""
    missing = sorted({n.op for n in spec.nodes} - set(table()) - {"in_training"})
    if missing:
        return f"no torch rule for {', '.join(missing)}"
    if spec.has_special():
        return "NaN/Inf feeds: gradient conventions at NaN differ"
    if spec.mode == "train" and any(n.op == "dropout" for n in spec.nodes):
        return "dropout masks in training"
    return None


def run(spec: Spec) -> dict[str, np.ndarray]:
    """The spec in torch float64: fetches of every call and the trained parameters, named as
    `oracle.execute` names them (optimizer state is not compared)."""
    import torch
    built = build(spec, "float64", uniform=True)
    leaves = {i: torch.from_numpy(np.array(built.values[i].value)).clone().requires_grad_(True)
              for i, leaf in enumerate(spec.leaves) if leaf.kind == "variable" and built.values[i].dtype.kind == "f"}
    for i, leaf in enumerate(spec.leaves):
        if leaf.kind != "placeholder" and i not in leaves:
            node = built.values[i]
            value = node.value if leaf.kind == "variable" else node.attrs["value"].array
            leaves[i] = torch.from_numpy(np.array(value))
    optimizer, params = _optimizer(spec, built, leaves) if spec.mode == "train" else (None, [])
    out: dict[str, np.ndarray] = {}
    for c, batch in enumerate(spec.batches):
        feeds = built.feeds(spec, c)
        values = _forward(spec, built, leaves, feeds, batch, c)
        for k, r in enumerate(spec.outputs):
            out[f"call{c}/out{k}"] = values[r].detach().numpy().copy()
        if spec.mode == "forward" or not float_outputs(spec, built.values):
            continue
        loss = _loss(spec, built, values, feeds)
        out[f"call{c}/loss"] = loss.detach().numpy().copy()
        if spec.mode == "grad":
            _gradients(spec, built, values, loss, out, c)
        elif loss.requires_grad:  # (else no parameter has a gradient: torch.optim skips them all)
            optimizer.zero_grad()
            loss.backward()
            clipnorm = spec.optimizer["kwargs"].get("clipnorm")
            if clipnorm is not None:
                torch.nn.utils.clip_grad_norm_(params, clipnorm)
            optimizer.step()
    if spec.mode == "train":
        for i, t in leaves.items():
            if spec.leaves[i].kind == "variable":
                out[f"final/v{i}"] = t.detach().numpy().copy()
    return out


def _forward(spec: Spec, built, leaves: dict, feeds: dict, batch: int, call: int) -> list:
    import torch
    values = []
    for i, leaf in enumerate(spec.leaves):
        if leaf.kind == "placeholder":
            t = torch.from_numpy(feeds[f"x{i}"].copy())
            if spec.mode == "grad" and t.dtype.is_floating_point:
                t.requires_grad_(True)
            values.append(t)
        else:
            values.append(leaves[i])
    for k, n in enumerate(spec.nodes):
        node = built.values[len(spec.leaves) + k]
        inputs = [values[i] for i in n.inputs]
        if n.op == "in_training":  # gn.compile trains (picks the first) exactly when given updates
            values.append(inputs[0] if spec.mode == "train" else inputs[1])
            continue
        attrs = resolve_attrs(n.attrs, "float64", True)
        values.append(table()[n.op](*inputs, **attrs, out=concrete(node.shape, batch)))
    return values


def _loss(spec: Spec, built, values: list, feeds: dict):
    import torch
    total = None
    for k, r in enumerate(float_outputs(spec, built.values)):
        v = values[r]
        if spec.loss == "weighted":
            v = v * torch.from_numpy(feeds[f"gy{k}"])
        term = v.mean() if spec.loss == "mean" else v.sum()
        total = term if total is None else total + term
    return total


def _gradients(spec: Spec, built, values: list, loss, out: dict, call: int) -> None:
    import torch
    from .spec import differentiable_leaves
    wrt = differentiable_leaves(spec, built.values)
    tensors = [values[i] for i in wrt]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True) if tensors and loss.requires_grad else \
        [None] * len(tensors)
    for i, t, g in zip(wrt, tensors, grads):
        name = built.values[i].attrs["name"]
        out[f"call{call}/d{name}"] = (torch.zeros_like(t) if g is None else g).detach().numpy().copy()


TORCH_OPTIMIZERS = {"SGD": "SGD", "Momentum": "SGD", "Adagrad": "Adagrad", "Adadelta": "Adadelta",
                    "RMSProp": "RMSprop", "Adam": "Adam", "AdamW": "AdamW"}


def _optimizer(spec: Spec, built, leaves: dict):
    """torch.optim's optimizer over the variables graphnet's optimizer updates (those with a
    differentiable path to the loss), with graphnet's defaults for the unset hyper-parameters."""
    import torch
    name, kwargs = spec.optimizer["name"], dict(spec.optimizer["kwargs"])
    defaults = {k: p.default for k, p in inspect.signature(getattr(gn.optim, name)).parameters.items()
                if p.default is not inspect.Parameter.empty}
    cls = getattr(torch.optim, TORCH_OPTIMIZERS[name])
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in {**defaults, **kwargs}.items() if k in accepted}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    updated = {p.attrs["name"] for p in built.updates.gradients}
    params = [t for i, t in leaves.items() if f"v{i}" in updated]
    if not params:
        raise Unsupported("no parameter with a gradient")
    return cls(params, **{**kwargs, "foreach": False}), params
