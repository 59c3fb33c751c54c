"""A step module's IR text split into parts that compile separately (`workers.py` compiles them at once).

A part holds the external functions named as its roots, every internal function they reach (an
internal function reached from two parts is defined in both), every top-level line that is not a
function definition (declarations, private globals, attribute groups, metadata: what a part does
not use the optimiser drops), and a declaration of each external function another part defines, which
the engine resolves when it loads the parts' objects together. Units whose internal functions are the
same code under other names (`_shape`: kernels that differ only in their buffers) go to one part, where
the compiler's function merging (`jit.Compiler.merge_functions`) optimises that code once. The number of
parts depends on the module alone (`part_count`), never on the machine, so the objects are the same
wherever they are built.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .workers import assign

PART_CHARS = 40_000  # IR below this size compiles faster in one process than a worker process costs to use
_NAME = re.compile(r'@("(?:[^"\\]|\\.)*"|[-\w.$]+)')
_GLOBAL_DEFINITION = re.compile(r'^@\S+ = (?!(?:private|internal|external)\b)')
_BUFFER_ARGUMENT = re.compile(r'%"b\d+"')  # the renderer names a kernel body's pointer arguments by buffer
_METADATA = re.compile(r'!\d+')


@dataclass
class _Function:
    name: str
    lines: list[str]
    internal: bool
    calls: set[str] = field(default_factory=set)


def part_count(text: str) -> int:
    """How many parts a module of this size is compiled in: one below `PART_CHARS`, else two, four from
    five times that (even counts: the parts share two or four processes evenly)."""
    return 1 if len(text) < PART_CHARS else 2 if len(text) < 5 * PART_CHARS else 4


def split_module(text: str, units: list[list[str]], parts: int) -> list[str]:
    """The module as `parts` texts, each the definitions of some units (lists of external functions,
    which together name each external definition once), the largest unit first to the smallest part;
    the module whole where it cannot be split (one part, a non-private global definition)."""
    header, functions = _parse(text)
    external = {f.name for f in functions.values() if not f.internal}
    placed = [name for unit in units for name in unit]
    if (parts <= 1 or len(units) <= 1 or sorted(placed) != sorted(external)
            or any(_GLOBAL_DEFINITION.match(line) for line in header)):
        return [text]
    units, sizes = _join_twins(units, functions)
    groups = [[name for u in bin_ for name in units[u]] for bin_ in assign(sizes, parts) if bin_]
    parts = []
    for group in groups:
        own = _reached(group, functions)
        declared = sorted({n for f in own for n in functions[f].calls if n in external and n not in own})
        lines = list(header) + [_declaration(functions[n].lines) for n in declared]
        for name in sorted(own, key=list(functions).index):  # definitions in the module's order
            lines += functions[name].lines
        parts.append("\n".join(lines) + "\n")
    return parts


def _join_twins(units: list[list[str]], functions: dict[str, _Function]) -> tuple[list[list[str]], list[int]]:
    """The units, those of the same `_shape` joined into one (at the first one's place), and the
    characters of IR each compiles: what its first unit reaches, plus only the roots of its twins (whose
    internal functions merge into the first one's)."""
    joined: dict[str, int] = {}
    units_out: list[list[str]] = []
    sizes: list[int] = []
    for i, unit in enumerate(units):
        shape = _shape(unit, functions) or f"unit {i}"
        if shape in joined:
            at = joined[shape]
            units_out[at] = units_out[at] + unit
            sizes[at] += sum(len(line) for f in unit for line in functions[f].lines)
        else:
            joined[shape] = len(units_out)
            units_out.append(list(unit))
            sizes.append(sum(len(line) for f in _reached(unit, functions) for line in functions[f].lines))
    return units_out, sizes


def _shape(unit: list[str], functions: dict[str, _Function]) -> str:
    """The unit's internal functions as text without what names them (the unit's own names, buffer
    arguments, metadata numbers; comments dropped): equal for kernels that differ only in their buffers.
    Empty for a unit without internal functions."""
    lines = []
    for name in sorted(_reached(unit, functions) - set(unit), key=list(functions).index):
        lines += [line for line in functions[name].lines if not line.startswith(";")]
    text = "\n".join(lines)
    for i, root in enumerate(unit):
        text = text.replace(root, f"<unit {i}>")
    return _METADATA.sub("!", _BUFFER_ARGUMENT.sub('%"b"', text))


def _parse(text: str) -> tuple[list[str], dict[str, _Function]]:
    """Top-level lines other than definitions, and the definitions by name (each with the comment
    lines just above it)."""
    header: list[str] = []
    functions: dict[str, _Function] = {}
    pending: list[str] = []  # comments, kept with the definition they precede
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("define "):
            body = [line]
            for inner in lines:
                body.append(inner)
                if inner == "}":
                    break
            names = [_unquote(n) for n in _NAME.findall("\n".join(body))]
            fn = _Function(names[0], pending + body, line.startswith(("define internal ", "define private ")))
            fn.calls = set(names[1:]) - {fn.name}
            functions[fn.name] = fn
            pending = []
        elif line.startswith(";"):
            pending.append(line)
        else:
            header += pending + [line]
            pending = []
    return header + pending, functions


def _reached(roots: list[str], functions: dict[str, _Function]) -> set[str]:
    """The roots and every internal function they call, directly or not."""
    seen, todo = set(roots), list(roots)
    while todo:
        for callee in functions[todo.pop()].calls:
            f = functions.get(callee)
            if f is not None and f.internal and callee not in seen:
                seen.add(callee)
                todo.append(callee)
    return seen


def _declaration(lines: list[str]) -> str:
    """`declare` for an external definition (its first line, up to the parameter list's end and its
    function attributes)."""
    head = next(line for line in lines if line.startswith("define "))
    return "declare " + head[len("define "):].rstrip().removesuffix("{").rstrip()


def _unquote(name: str) -> str:
    return name[1:-1] if name.startswith('"') else name
