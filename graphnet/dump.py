"""Writing a compiled function's graphs and generated code to a folder.

One folder per compile: `NN_<pass>.txt` and `.dot` (the graph after each pass), the backend's
artifacts (loop IR, LLVM IR, assembly or OpenCL C), `graph.dot`/`graph.svg` (the final graph),
`report.html` and `summary.txt`. With GRAPHNET_DUMP=dir every compile gets its own numbered
subfolder, so the functions of one run sit side by side instead of overwriting each other.
"""
from __future__ import annotations

import os
import re

from . import report, viz


def dump_function(fn, directory: str, title: str | None = None) -> str:
    """Write everything about `fn` into `directory` (created if needed); returns the directory."""
    os.makedirs(directory, exist_ok=True)
    summary = []
    for i, record in enumerate(fn.records):
        stem = os.path.join(directory, f"{i:02d}_{record.name}")
        _write(stem + ".txt", record.text + "\n")
        _write(stem + ".dot", viz.to_dot(record.program, title=f"after {record.name}"))
        summary.append(f"{i:02d} {record.name:<18} {record.nodes:6d} nodes  {record.seconds * 1e3:8.2f} ms")
    artifacts = fn.executable.artifacts()
    for name, text in artifacts.items():
        _write(os.path.join(directory, name), text)
    dot_text, svg = report.report_graph(fn, artifacts, title)
    _write(os.path.join(directory, "graph.dot"), dot_text)
    if svg is not None:
        _write(os.path.join(directory, "graph.svg"), svg)
    _write(os.path.join(directory, "report.html"), report.html_report(fn, artifacts, dot_text, svg, title))
    program = fn.program
    head = [f"backend: {fn.options.backend}", f"training: {fn.options.training}",
            f"program: {program.hash()[:16]}",
            f"fetches: {', '.join(f.name for f in program.fetches)}",
            f"updates: {', '.join(v.name for v, _ in program.updates) or '-'}",
            f"regions: {len(set(program.regions.values()))}",
            f"artifacts: {', '.join(artifacts) or '- (this backend generates no code)'}",
            f"graph.svg: {'written' if svg is not None else 'not written: Graphviz dot is not installed'}",
            "", "passes:"]
    _write(os.path.join(directory, "summary.txt"), "\n".join(head + summary) + "\n")
    return directory


def dump_numbered(fn, root: str) -> str:
    """Dump into a new subfolder `NN_<program hash>` of `root` (the GRAPHNET_DUMP layout)."""
    os.makedirs(root, exist_ok=True)
    taken = [int(m.group(1)) for m in map(re.compile(r"(\d+)_").match, os.listdir(root)) if m]
    number = max(taken, default=-1) + 1
    while True:
        directory = os.path.join(root, f"{number:02d}_{fn.program.hash()[:8]}")
        try:
            os.mkdir(directory)  # claims the number even when another process dumps at the same time
            break
        except FileExistsError:
            number += 1
    return dump_function(fn, directory)


def _write(path: str, text: str) -> None:
    """UTF-8; a character UTF-8 cannot hold (a lone surrogate) is written as its escape."""
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(text)
