"""Graphviz pictures of graphs and compiled functions.

Forward, backward (gradient) and optimizer-update nodes get distinct colours, fused regions (or a
backend's kernels) become clusters, edges carry shapes and every node's tooltip holds the user's
source line, so a picture answers "what did the compiler make of my code, and where did it come
from". Only DOT text is produced here; `render` hands it to Graphviz's `dot` binary (Debian package
`graphviz`) when installed, since nothing renders DOT in pure Python.
"""
from __future__ import annotations

import html
import linecache
import os
import re
import shutil
import subprocess
import warnings
from typing import Any, Iterable, Mapping

from .graph import Graph, Node, ancestors, shape_str
from .program import Program

COLOURS = {"input": "#eeeeee", "forward": "#cfe2ff", "backward": "#ffd8a8", "update": "#c3f0c8"}
SOURCE_OPS = {"placeholder", "variable", "constant", "batch_size"}
FORMATS = {"svg", "png", "pdf"}
# control characters (C0, DEL, C1), line and paragraph separators, lone surrogates: never raw in output
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def to_dot(obj: Any, kernels: Mapping[Node, str] | None = None,
           title: str | None = None, cluster_urls: Mapping[str, str] | None = None) -> str:
    """DOT text for a Program, a whole Graph, the nodes some outputs need, or a compiled function
    (anything with `.program` and `.kernel_map()`).

    `kernels` (node -> kernel name) draws a backend's kernels as clusters instead of the
    program's fusion regions; for a compiled function it defaults to its `kernel_map()`.
    `cluster_urls` (cluster name -> URL) makes clusters links. Scalar constants are written into
    their consumers' labels.
    """
    if kernels is None and _compiled(obj):
        kernels = obj.kernel_map()
    program = as_program(obj)
    kinds = classify(program)
    groups = dict(program.regions if kernels is None else kernels)
    nodes = [n for n in program.nodes() if not _inlined(n)]
    ids = {n: f"n{i}" for i, n in enumerate(nodes)}
    fetches = set(program.fetches)

    lines = ["digraph graphnet {",
             '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, labelloc=b, newrank=true];',
             '  node [style="filled,rounded", shape=box, fontname="Helvetica", fontsize=10, penwidth=0.8];',
             '  edge [fontname="Helvetica", fontsize=8, fontcolor="#555555", color="#777777", arrowsize=0.6];',
             *_legend(title, {kinds[n] for n in nodes}, bool(program.updates))]
    clusters: dict[str, list[Node]] = {}
    for n in nodes:
        clusters.setdefault(groups.get(n, ""), []).append(n)
    for index, (name, members) in enumerate(sorted(clusters.items(), key=lambda kv: kv[0])):
        indent = "  "
        if name:
            lines.append(f"  subgraph cluster_{index} {{")
            lines.append(f'    label={quote(name)}; style="dashed,rounded"; color="#555555"; fontsize=9;')
            if cluster_urls and name in cluster_urls:
                lines.append(f"    URL={quote(cluster_urls[name])}; tooltip={quote('code of ' + name)};")
            indent = "    "
        for n in members:
            lines.append(indent + _node_line(ids[n], n, kinds[n], n in fetches))
        if name:
            lines.append("  }")
    for n in nodes:
        for x in n.inputs:
            if x in ids:
                label = _edge_label(x)
                lines.append(f"  {ids[x]} -> {ids[n]} [label={quote(label)}, tooltip={quote(label)}];")
    for var, value in program.updates:
        if value in ids:
            lines.append(f'  {ids[value]} -> {ids[var]} [style=dashed, color="#2f9e4488", penwidth=0.7, '
                         f'tooltip={quote("writes " + var.name)}, constraint=false];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _compiled(obj: Any) -> bool:
    return hasattr(obj, "program") and hasattr(obj, "kernel_map")


def as_program(obj: Any) -> Program:
    """The Program a picture shows: a function's optimised program, or fetches of the given nodes."""
    if _compiled(obj):
        return obj.program
    if isinstance(obj, Program):
        return obj
    if isinstance(obj, Graph):
        used = {x for n in obj.nodes for x in n.inputs}
        return Program([n for n in obj.nodes if n not in used])
    if isinstance(obj, Node):
        return Program([obj])
    if isinstance(obj, (list, tuple)) and all(isinstance(n, Node) for n in obj):
        return Program(list(obj))
    raise TypeError(f"to_dot: expected a compiled function, Program, Graph or graph nodes, got {type(obj).__name__}")


def kernel_map(program: Program, lp: Any) -> dict[Node, str]:
    """Node -> the name of the loop program `lp`'s kernel that computes it.

    A kernel's stores name the nodes it writes; a node computed inside a kernel without being
    stored (e.g. the matmul under a fused bias and activation) joins its consumers' kernel when
    they all share one.
    """
    nodes = program.nodes()
    by_name = {n.name: n for n in nodes}
    kernels = {by_name[s.node]: k.name for k in lp.kernels for s in k.stores if s.node in by_name}
    consumers: dict[Node, list[Node]] = {}
    for n in nodes:
        for x in n.inputs:
            consumers.setdefault(x, []).append(n)
    for n in reversed(nodes):
        if n in kernels or n.op.name in SOURCE_OPS or n not in consumers:
            continue
        homes = {kernels.get(c) for c in consumers[n]}
        if len(homes) == 1 and None not in homes:
            kernels[n] = homes.pop()
    return kernels


def classify(program: Program) -> dict[Node, str]:
    """Each node's role: "input" (leaves), "forward", "backward" or "update".

    Forward nodes are those the fetches depend on. Where an optimizer recorded the parameters'
    gradients (`Program.gradients`), backward nodes are what those gradients are computed from and
    the rest is the optimizer's update; otherwise update nodes are the "update:" fusion regions and
    the values written to variables, and whatever else feeds an update counts as backward.
    """
    forward = set(Program(program.fetches).nodes())
    backward = set(ancestors(list(program.gradients.values())))
    update = {n for n, region in program.regions.items() if region.startswith("update:")}
    update |= {value for _, value in program.updates if value not in forward}
    kinds = {}
    for n in program.nodes():
        if n.op.name in SOURCE_OPS:
            kinds[n] = "input"
        elif n in forward:
            kinds[n] = "forward"
        elif n in update or (program.gradients and n not in backward):
            kinds[n] = "update"
        else:
            kinds[n] = "backward"
    return kinds


def to_svg(dot_text: str) -> str | None:
    """SVG text rendered by `dot`, or None when Graphviz is not installed."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    return _run_dot(exe, "svg", dot_text).decode()


def render(dot_text: str, path: str) -> str:
    """Render DOT text to `path` (.svg, .png or .pdf) with Graphviz; returns the file written.

    Without `dot` on PATH the DOT text goes to `path` with the suffix .dot and a warning says so.
    """
    stem, ext = os.path.splitext(path)
    fmt = ext.lstrip(".").lower()
    if fmt != "dot" and fmt not in FORMATS:
        raise ValueError(f"render: cannot write '{path}': use one of .svg, .png, .pdf or .dot")
    exe = shutil.which("dot")
    if fmt == "dot" or exe is None:
        written = stem + ".dot"
        with open(written, "w") as f:
            f.write(dot_text)
        if fmt != "dot":
            warnings.warn(f"Graphviz 'dot' not found (install the graphviz package): wrote {written} "
                          f"instead of {path}", stacklevel=2)
        return written
    with open(path, "wb") as f:
        f.write(_run_dot(exe, fmt, dot_text))
    return path


def quote(text: Any) -> str:
    """A DOT double-quoted string; newlines become DOT's centred line breaks, other control
    characters and lone surrogates (which break `dot` and UTF-8 files) show as Python escapes."""
    lines = (printable(line).replace("\\", "\\\\").replace('"', '\\"') for line in str(text).split("\n"))
    return '"' + "\\n".join(lines) + '"'


def printable(text: str, keep: str = "") -> str:
    """`text` with each control character (but those in `keep`) and lone surrogate written as its
    Python escape (NUL as \\x00)."""
    return UNPRINTABLE.sub(lambda m: m.group() if m.group() in keep else ascii(m.group())[1:-1], text)


def _run_dot(exe: str, fmt: str, dot_text: str) -> bytes:
    done = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {done.stderr.decode().strip()}")
    return done.stdout


def _inlined(n: Node) -> bool:
    return n.op.name == "constant" and n.attrs["value"].array.size == 1


def _node_line(node_id: str, n: Node, kind: str, fetched: bool) -> str:
    attrs = {"label": _label(n), "tooltip": _tooltip(n, kind), "fillcolor": COLOURS[kind]}
    if n.op.name == "placeholder":
        attrs["shape"] = "invhouse"
    elif n.op.name == "variable":
        attrs["shape"] = "cylinder"
    if fetched:
        attrs["peripheries"] = "2"
    return f"{node_id} [" + ", ".join(f"{k}={quote(v)}" for k, v in attrs.items()) + "];"


def _label(n: Node) -> str:
    if n.op.name in ("placeholder", "variable"):
        return n.attrs["name"]
    if n.op.name == "constant":
        return f"constant {shape_str(n.shape)}"
    args = ", ".join(_scalar(x) if _inlined(x) else "·" for x in n.inputs)
    extra = {k: v for k, v in n.attrs.items() if k not in ("name", "var", "value")}
    details = " ".join(f"{k}={_short(v)}" for k, v in extra.items())
    return f"{n.op.name}({args})" + (f"\n{details}" if details else "")


def _scalar(n: Node) -> str:
    value = n.attrs["value"].array.item()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _tooltip(n: Node, kind: str) -> str:
    lines = [f"{n.name}: {n.op.name} -> {n.dtype} {shape_str(n.shape)} [{kind}]", n.source]
    path, _, line = n.source.rpartition(":")
    if line.isdigit():
        code = linecache.getline(path, int(line)).strip()
        if code:
            lines.append(code)
    return "\n".join(lines)


def _edge_label(x: Node) -> str:
    return shape_str(x.shape) + ("" if x.dtype.name == "float32" else f" {x.dtype.name}")


def _legend(title: str | None, kinds: set[str], writes: bool) -> list[str]:
    """The graph label: the title over one coloured cell per kind present (and the update edges' style)."""
    rows = []
    if title:
        rows.append(f'<tr><td colspan="{max(len(kinds) + writes, 1)}">{html.escape(printable(title), quote=False)}'
                    f'</td></tr>')
    if kinds:
        cells = "".join(f'<td bgcolor="{COLOURS[k]}"> {k} </td>' for k in COLOURS if k in kinds)
        if writes:
            cells += '<td><font color="#2f9e44">- - -&gt; writes a variable</font></td>'
        rows.append(f"<tr>{cells}</tr>")
    return [f'  label=<<table border="0" cellspacing="4">{"".join(rows)}</table>>;'] if rows else []
