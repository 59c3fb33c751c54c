"""Structural rules of the code base: no import cycles among the compiler's modules, tools beside the
core (not imported by it), and public op functions derived from the registry."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import graphnet as gn
from graphnet.ops import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("graphnet", "codegen")
TOOLS = ("graphnet.bench", "graphnet.testing")  # beside the core: they may import it, not the other way


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> nx.DiGraph:
    """module -> imported module, for every import in graphnet/ and codegen/ (function-level ones
    included) except those under `if TYPE_CHECKING:`."""
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = ".".join(package[:len(package) - node.level + 1] + [node.module] if node.level else
                                [node.module]) if node.module else ".".join(package[:len(package) - node.level + 1])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph.add_edges_from((name, t) for t in targets if t.split(".")[0] in PACKAGES)
    return graph


def test_no_import_cycles_among_the_compilers_modules():
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:10])


def test_the_core_imports_no_tool():
    graph = import_graph()
    core = [m for m in graph if not m.startswith(TOOLS) and m not in ("graphnet.cli",)]
    offending = [(m, t) for m in core for t in graph.successors(m) if t.startswith(TOOLS)]
    assert not offending, offending


def test_the_import_graph_sees_imports():
    """Guards the test above against an analysis that finds nothing."""
    graph = import_graph()
    assert graph.has_edge("codegen.lower", "codegen.loop_passes")
    assert graph.has_edge("graphnet.ops", "graphnet.ops.api") and graph.has_edge("graphnet.ops.api", "graphnet.graph")
    assert len(graph.edges) > 100


def test_public_op_functions_come_from_the_registry():
    generated = [name for name, op in REGISTRY.items() if op.signature in ("unary", "binary")]
    assert {"exp", "add", "less", "tanh"} <= set(generated)
    for name in generated:
        fn = getattr(gn, name)
        assert fn.__name__ == name and name in gn.ops.__all__
    for name in gn.ops.__all__:
        assert callable(getattr(gn, name)), name


@pytest.mark.parametrize("module", ["codegen.loopir", "codegen.lower", "codegen.llvm.backend", "codegen.opencl.backend",
                                    "graphnet.distributed", "graphnet.testing.fuzz"])
def test_a_module_imported_first_in_a_fresh_process_imports(module):
    """Importing a module executes its packages' __init__ first (graphnet's imports the Keras API):
    an import the module graph above cannot see as a cycle can still meet a half-initialised module."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=120, cwd=ROOT)
