"""The benchmark harness, beside the compiler: nothing in graphnet's core or codegen/ imports it.

- `runner`: `graphnet bench` / `python -m graphnet.bench`, training-step time against the peers;
- `peers`: the grid configurations (`GRID`), their data and weights, and the numpy/PyTorch/JAX steps;
- `grid`: the same models built with graphnet;
- `ceilings`: native reference points compiled from `native/*.c` with the system C compiler;
- `micro/`: micro-benchmarks of generated code (`python -m graphnet.bench.micro.gemm`, `.parallel`, `.step`).
"""
