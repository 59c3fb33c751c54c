"""The image ops beyond lenet's and cifar's against PyTorch eager: strided convolutions (whose input
gradients run as stride-1 phases, passes/strided_grads.py), a transposed convolution, and resizing
(nearest, bilinear, bicubic). Each case is one call of the forward and its gradients (of the sum of
the output's squares) on a batch of 64 NHWC images (PyTorch: NCHW, channels-last where that is its
fast layout), both on one thread, interleaved in one process; medians and PyTorch's time over
graphnet's.

    GRAPHNET_NUM_THREADS=1 python -m graphnet.bench.micro.convops [--repeats 7]
"""
from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import graphnet as gn  # noqa: E402

from .step import per_step  # noqa: E402

BATCH = 64
# (label, image (H, W, C), op, keywords): conv2d (filter (K, K, C, F), stride), conv2d_transpose
# (filter (K, K, F, C), stride), resize (size, method)
CASES = [
    ("conv 3x3 stride 2, 32x32x32 -> 64", (32, 32, 32), "conv2d", dict(k=3, f=64, s=2)),
    ("conv 3x3 stride 2, 16x16x64 -> 128", (16, 16, 64), "conv2d", dict(k=3, f=128, s=2)),
    ("conv 1x1 stride 2, 32x32x16 -> 32", (32, 32, 16), "conv2d", dict(k=1, f=32, s=2)),
    ("conv 4x4 stride 2, 28x28x8 -> 16", (28, 28, 8), "conv2d", dict(k=4, f=16, s=2)),
    ("transposed conv 3x3 stride 2, 16x16x64 -> 32x32x32", (16, 16, 64), "conv2d_transpose", dict(k=3, f=32, s=2)),
    ("resize nearest 32x32x32 -> 64x64", (32, 32, 32), "resize", dict(method="nearest")),
    ("resize bilinear 32x32x32 -> 64x64", (32, 32, 32), "resize", dict(method="bilinear")),
    ("resize bicubic 32x32x32 -> 64x64", (32, 32, 32), "resize", dict(method="bicubic")),
]


def graphnet_step(image: tuple, op: str, kw: dict, x: np.ndarray, w: np.ndarray | None):
    with gn.Graph():
        xp = gn.placeholder("x", (None, *image))
        if op == "resize":
            y = gn.resize(xp, (2 * image[0], 2 * image[1]), kw["method"])
            fetches = gn.gradients(gn.sum(y * y), [xp])
        else:
            wv = gn.variable("w", w)
            pad = "same"
            y = (gn.conv2d(xp, wv, kw["s"], pad) if op == "conv2d" else
                 gn.conv2d_transpose(xp, wv, kw["s"], pad))
            fetches = gn.gradients(gn.sum(y * y), [xp, wv])
        fn = gn.compile(fetches, backend="llvm")
    return lambda: fn(x=x)


def torch_step(image: tuple, op: str, kw: dict, x: np.ndarray, w: np.ndarray | None):
    import torch
    torch.set_num_threads(1)
    F = torch.nn.functional
    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    if op == "resize":
        options = dict(mode="nearest") if kw["method"] == "nearest" else dict(mode=kw["method"], align_corners=False)

        def step():
            y = F.interpolate(tx, size=(2 * image[0], 2 * image[1]), **options)
            torch.autograd.grad((y * y).sum(), [tx])
        return step
    k, s = kw["k"], kw["s"]
    if op == "conv2d":  # "same" for these odd and even kernels: torch pads both sides by (k - 1) // 2 ...
        tw = torch.tensor(np.transpose(w, (3, 2, 0, 1)).copy()).requires_grad_(True)
        total = max((-(-image[0] // s) - 1) * s + k - image[0], 0)  # ... Keras puts the odd one after
        conv = (lambda t: F.conv2d(F.pad(t, (total // 2, total - total // 2) * 2), tw, stride=s))
    else:  # Keras's "same" transposed conv: H * s outputs; torch's padding and output_padding give them
        tw = torch.tensor(np.transpose(w, (3, 2, 0, 1)).copy()).requires_grad_(True)
        conv = (lambda t: F.conv_transpose2d(t, tw, stride=s, padding=(k - 1) // 2, output_padding=s - 1))

    def step():
        y = conv(tx)
        torch.autograd.grad((y * y).sum(), [tx, tw])
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"one call of forward + gradients, batch {BATCH}, graphnet threads "
          f"{os.environ.get('GRAPHNET_NUM_THREADS', '?')}, torch 1; medians of {args.repeats} interleaved rounds")
    print(f"{'case':<52} {'graphnet ms':>12} {'torch ms':>10} {'torch / graphnet':>17}")
    for label, image, op, kw in CASES:
        x = rng.normal(size=(BATCH, *image)).astype(np.float32)
        w = None
        if op != "resize":
            shape = (kw["k"], kw["k"], image[2], kw["f"]) if op == "conv2d" else (kw["k"], kw["k"], kw["f"], image[2])
            w = (rng.normal(size=shape) * 0.05).astype(np.float32)
        steps = {"graphnet": graphnet_step(image, op, kw, x, w)}
        try:
            steps["torch"] = torch_step(image, op, kw, x, w)
        except ImportError:
            pass
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                times[name].append(per_step(step, 1)[0])
        ours = float(np.median(times["graphnet"]))
        theirs = float(np.median(times["torch"])) if "torch" in times else float("nan")
        print(f"{label:<52} {ours * 1e3:12.2f} {theirs * 1e3:10.2f} {theirs / ours:17.2f}", flush=True)


if __name__ == "__main__":
    main()
