"""Writing a compiled function's graphs and generated code to a folder."""
from __future__ import annotations

import os


def dump_function(fn, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    summary = []
    for i, record in enumerate(fn.records):
        with open(os.path.join(directory, f"{i:02d}_{record.name}.txt"), "w") as f:
            f.write(record.text + "\n")
        summary.append(f"{i:02d} {record.name:<18} {record.nodes:6d} nodes  {record.seconds * 1e3:8.2f} ms")
    for name, text in fn.executable.artifacts().items():
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
    with open(os.path.join(directory, "summary.txt"), "w") as f:
        f.write(f"backend: {fn.options.backend}\ntraining: {fn.options.training}\n" + "\n".join(summary) + "\n")
    return directory
