"""A self-contained HTML report of one compiled function, readable offline in any browser.

One file holds everything: the graph as inline SVG next to each kernel's generated code, the
node count before and after each pass, and the graph text after every pass. Nothing is fetched
from the network (inline CSS, no scripts), so the report can be mailed or archived as it is.
"""
from __future__ import annotations

import html
import re

from . import viz
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
    dot_text = viz.to_dot(fn, title=title)
    with open(path, "w", encoding="utf-8") as f:
        f.write(html_report(fn, dot_text, viz.to_svg(dot_text), title))
    return path


def html_report(fn: Function, dot_text: str, svg: str | None, title: str | None = None) -> str:
    """The report's HTML; `svg` is the rendered `dot_text`, or None to show the DOT text instead."""
    title = title or f"{fn.options.backend} function {fn.program.hash()[:8]}"
    updates = len(fn.program.updates)
    meta = (f"backend <b>{fn.options.backend}</b> · {'training' if fn.options.training else 'inference'} · "
            f"{len(fn.program.fetches)} fetches · {updates} variable updates · "
            f"{len(fn.program.nodes())} nodes · program {fn.program.hash()[:8]}")
    parts = [f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
             f"<title>graphnet: {html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>",
             f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{meta}</p>',
             "<h2>Passes</h2>", _pass_table(fn),
             '<div class="side">', '<section><h2>Graph</h2><div class="graph">', _graph(dot_text, svg),
             "</div></section>", '<section><h2>Generated code</h2><div class="code">', _code(fn),
             "</div></section>", "</div>",
             "<h2>Graph after each pass</h2>", _pass_texts(fn), "</body>\n</html>\n"]
    return "\n".join(parts)


def _pass_table(fn: Function) -> str:
    rows = ["<table><tr><th>pass</th><th>nodes before</th><th>nodes after</th><th>change</th><th>ms</th></tr>"]
    for before, record in zip(fn.records, fn.records[1:]):
        change = record.nodes - before.nodes
        rows.append(f"<tr><td>{html.escape(record.name)}</td><td>{before.nodes}</td><td>{record.nodes}</td>"
                    f"<td>{change:+d}</td><td>{record.seconds * 1e3:.2f}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _graph(dot_text: str, svg: str | None) -> str:
    if svg is None:
        return ('<p class="note">Graphviz <code>dot</code> is not installed, so this is the DOT text '
                "(install the <code>graphviz</code> package to see the picture).</p>"
                f"<pre>{html.escape(dot_text)}</pre>")
    svg = re.sub(r"<!--.*?-->\s*", "", svg[svg.find("<svg"):], flags=re.S)
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)  # HTML needs no namespace URLs for inline SVG


def _code(fn: Function) -> str:
    artifacts = fn.executable.artifacts()
    if not artifacts:
        return (f"<p>The {html.escape(fn.options.backend)} backend generates no code: it evaluates the "
                "optimised graph node by node.</p>")
    return "\n".join(f"<details open><summary>{html.escape(name)} ({text.count(chr(10)) + 1} lines)</summary>"
                     f"<pre>{html.escape(text)}</pre></details>" for name, text in artifacts.items())


def _pass_texts(fn: Function) -> str:
    return "\n".join(f"<details><summary>{i:02d} {html.escape(r.name)} ({r.nodes} nodes)</summary>"
                     f"<pre>{html.escape(r.text)}</pre></details>" for i, r in enumerate(fn.records))
