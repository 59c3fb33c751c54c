"""A self-contained HTML report of one compiled function, readable offline in any browser.

One file holds everything: the graph as inline SVG next to each kernel's generated code, the
node count before and after each pass, and the graph text after every pass. Nothing is fetched
from the network (inline CSS, no scripts), so the report can be mailed or archived as it is.
"""
from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from . import viz

if TYPE_CHECKING:
    from .function import Function

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.side { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 1.5em; align-items: start; }
.graph { overflow: auto; max-height: 92vh; border: 1px solid #ddd; padding: 0.5em; }
.code { overflow: auto; max-height: 92vh; }
pre { background: #f6f8fa; padding: 0.6em; overflow: auto; font-size: 0.8em; line-height: 1.35; }
summary { cursor: pointer; font-family: monospace; padding: 0.2em 0; }
.note { color: #8a5a00; }
"""


def write_report(fn: Function, path: str, title: str | None = None) -> str:
    """Write `fn`'s report to `path` (rendering the graph with Graphviz when installed)."""
    artifacts = fn.executable.artifacts()
    dot_text, svg = report_graph(fn, artifacts, title)
    with open(path, "w", encoding="utf-8") as f:
        f.write(html_report(fn, artifacts, dot_text, svg, title))
    return path


def report_graph(fn: Function, artifacts: dict[str, str], title: str | None = None) -> tuple[str, str | None]:
    """The report's picture: DOT text whose kernel clusters link to their code, and its SVG (None
    without Graphviz)."""
    urls = {name: f"#{_anchor(name)}" for name in kernel_code(artifacts)}
    dot_text = viz.to_dot(fn, title=title, cluster_urls=urls)
    return dot_text, viz.to_svg(dot_text)


def html_report(fn: Function, artifacts: dict[str, str], dot_text: str, svg: str | None,
                title: str | None = None) -> str:
    """The report's HTML; `svg` is the rendered `dot_text`, or None to show the DOT text instead."""
    title = title or f"{fn.options.backend} function {fn.program.hash()[:8]}"
    meta = (f"backend <b>{_escape(fn.options.backend)}</b> · "
            f"{'training' if fn.options.training else 'inference'} · {len(fn.program.fetches)} fetches · "
            f"{len(fn.program.updates)} variable updates · {len(fn.program.nodes())} nodes · "
            f"program {fn.program.hash()[:8]}")
    parts = [f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
             f"<title>graphnet: {_escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>",
             f"<h1>{_escape(title)}</h1>", f'<p class="meta">{meta}</p>',
             "<h2>Passes</h2>", _pass_table(fn),
             '<div class="side">', '<section><h2>Graph</h2><div class="graph">', _graph(dot_text, svg),
             "</div></section>", '<section><h2>Generated code</h2><div class="code">',
             _code(fn.options.backend, artifacts), "</div></section>", "</div>",
             "<h2>Graph after each pass</h2>", _pass_texts(fn), "</body>\n</html>\n"]
    return "\n".join(parts)


def kernel_code(artifacts: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Each kernel's share of the generated code: kernel name -> [(file name, text)].

    The kernels are those the loop IR lists (`kernel NAME over ...`); their code is found by name:
    LLVM `define`s and OpenCL `__kernel`s named NAME or NAME_..., assembly from the label NAME:
    to the function's end.
    """
    units = [(file, name, text) for file, source in artifacts.items() for name, text in _units(source)]
    code: dict[str, list[tuple[str, str]]] = {name.removeprefix(_LOOP_KERNEL): []
                                              for _, name, _ in units if name.startswith(_LOOP_KERNEL)}
    for file, name, text in units:
        name = name.removeprefix(_LOOP_KERNEL)
        owner = max((k for k in code if name == k or name.startswith(k + "_")), key=len, default=None)
        if owner is not None:
            code[owner].append((file, text))
    return code


_LOOP_KERNEL = "loop:"  # marks the loop IR's units, which define the kernels
_STARTS = [  # (pattern of a unit's first line, how the unit ends, prefix for its name)
    (re.compile(r"^kernel (\S+) over\b"), "dedent", _LOOP_KERNEL),
    (re.compile(r'^define [^@]*@"?([^"(\s]+)"?\('), "}", ""),
    (re.compile(r"^(?:__kernel|kernel)\s+void\s+(\w+)\s*\("), "}", ""),
    (re.compile(r'^"?([A-Za-z_][\w.$]*)"?:\s*$'), ".Lfunc_end", ""),
]


def _units(source: str) -> list[tuple[str, str]]:
    """The named functions/kernels of one code file, each with its text."""
    lines = source.splitlines()
    units, i = [], 0
    while i < len(lines):
        for pattern, end, prefix in _STARTS:
            match = pattern.match(lines[i])
            if match:
                j = i + 1
                while j < len(lines) and not _ends(lines[j], end):
                    j += 1
                stop = j if end == "dedent" else min(j + 1, len(lines))
                units.append((prefix + match.group(1), "\n".join(lines[i:stop])))
                i = stop - 1
                break
        i += 1
    return units


def _ends(line: str, end: str) -> bool:
    if end == "dedent":
        return not line[:1].isspace()
    return line.startswith(end)


def _pass_table(fn: Function) -> str:
    rows = ["<table><tr><th>pass</th><th>nodes before</th><th>nodes after</th><th>change</th><th>ms</th></tr>"]
    for before, record in zip(fn.records, fn.records[1:]):
        change = record.nodes - before.nodes
        rows.append(f"<tr><td>{_escape(record.name)}</td><td>{before.nodes}</td><td>{record.nodes}</td>"
                    f"<td>{change:+d}</td><td>{record.seconds * 1e3:.2f}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _graph(dot_text: str, svg: str | None) -> str:
    if svg is None:
        return ('<p class="note">Graphviz <code>dot</code> is not installed, so this is the DOT text '
                "(install the <code>graphviz</code> package to see the picture).</p>"
                f"<pre>{_escape(dot_text)}</pre>")
    svg = re.sub(r"<!--.*?-->\s*", "", svg[svg.find("<svg"):], flags=re.S)
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)  # HTML needs no namespace URLs for inline SVG


def _code(backend: str, artifacts: dict[str, str]) -> str:
    if not artifacts:
        return (f"<p>The {_escape(backend)} backend generates no code: it evaluates the optimised graph "
                "node by node.</p>")
    kernels = kernel_code(artifacts)
    parts = [f'<details id="{_anchor(name)}"><summary>kernel {_escape(name)} '
             f"({', '.join(_escape(file) for file, _ in pieces)})</summary>"
             + "".join(f"<p>{_escape(file)}</p><pre>{_escape(text)}</pre>" for file, text in pieces)
             + "</details>" for name, pieces in kernels.items()]
    if kernels:
        parts.append("<h3>Whole files</h3>")
    parts += [f"<details{'' if kernels else ' open'}><summary>{_escape(name)} "
              f"({text.count(chr(10)) + 1} lines)</summary><pre>{_escape(text)}</pre></details>"
              for name, text in artifacts.items()]
    return "\n".join(parts)


def _escape(text: str) -> str:
    """HTML text with no raw control character or lone surrogate (names are checked when a graph is
    built; generated code and pass texts keep their tabs and newlines)."""
    return html.escape(viz.printable(text, keep="\t\n"))


def _anchor(kernel: str) -> str:
    return "kernel-" + re.sub(r"[^\w-]", "_", kernel)


def _pass_texts(fn: Function) -> str:
    return "\n".join(f"<details><summary>{i:02d} {_escape(r.name)} ({r.nodes} nodes)</summary>"
                     f"<pre>{_escape(r.text)}</pre></details>" for i, r in enumerate(fn.records))
