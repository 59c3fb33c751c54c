"""Micro-benchmarks of generated code, each run as `python -m graphnet.bench.micro.<name>`."""
