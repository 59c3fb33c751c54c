"""Differential fuzzing of graphnet: random graphs over the op registry, run on every backend and
compared with the numpy reference and PyTorch float64 autograd (see fuzz.py for the command)."""
