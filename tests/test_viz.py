"""gn.viz pictures, the HTML report and dump folders, checked on a small hand-written training step."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import graphnet as gn
from graphnet import viz
from graphnet.program import Program
from graphnet.report import kernel_code, write_report

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not installed")


def sgd_step():
    """loss of a 2-3-1 MLP and plain SGD updates written by hand (no optimizer-fusion regions)."""
    x = gn.placeholder("x", (None, 2))
    y = gn.placeholder("y", (None, 1))
    W1 = gn.variable("W1", gn.init.glorot_uniform((2, 3), seed=0))
    b1 = gn.variable("b1", np.zeros(3, np.float32))
    W2 = gn.variable("W2", gn.init.glorot_uniform((3, 1), seed=1))
    hidden = gn.relu(x @ W1 + b1)  # the hidden layer's line
    loss = gn.mean((hidden @ W2 - y) ** 2)
    params = [W1, b1, W2]
    grads = gn.gradients(loss, params)
    updates = [(p, p - 0.1 * g) for p, g in zip(params, grads)]
    return gn.compile([loss], updates=updates, backend="numpy"), loss, grads


def dot_ok(text: str) -> str:
    done = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def node_lines(dot_text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"^\s*(n\d+) \[.*\];$", dot_text, re.M)}


@needs_dot
def test_dot_of_a_training_step_renders():
    step, _, _ = sgd_step()
    svg = dot_ok(gn.viz.to_dot(step, title='a "quoted" <title> \\ with a backslash'))
    assert "<svg" in svg and "a &quot;quoted&quot; &lt;title&gt;" in svg


def test_forward_backward_and_update_nodes_get_their_colours():
    step, _, _ = sgd_step()
    kinds = viz.classify(step.program)
    (loss,) = step.program.fetches
    assert kinds[loss] == "forward"
    for var, value in step.program.updates:
        assert kinds[var] == "input" and kinds[value] == "update"
    matmuls = [n for n in step.program.nodes() if n.op.name == "matmul"]
    assert {kinds[n] for n in matmuls} == {"forward", "backward"}  # x@W1, h@W2 vs the gradient matmuls
    text = viz.to_dot(step)
    for kind, colour in viz.COLOURS.items():
        assert f'fillcolor="{colour}"' in text, kind
    assert text.count("style=dashed") == len(step.program.updates)  # one "update" edge per variable


def test_regions_and_kernels_become_clusters():
    step, _, _ = sgd_step()
    program = step.program
    (var, value), *_ = program.updates
    regions = {value: f"update:{var.name}", value.inputs[1]: f"update:{var.name}"}
    text = viz.to_dot(Program(program.fetches, program.updates, regions))
    cluster = re.search(r"subgraph cluster_\d+ \{\n(.*?)\n  \}", text, re.S).group(1)
    assert 'label="update:W1"' in cluster
    assert len(node_lines(cluster)) == 2
    assert viz.classify(Program(program.fetches, program.updates, regions))[value.inputs[1]] == "update"
    (fetch,) = program.fetches
    kernels = {fetch: "kernel_7_loss", fetch.inputs[0]: "kernel_7_loss"}
    text = viz.to_dot(Program(program.fetches, program.updates, regions), kernels=kernels)
    assert 'label="kernel_7_loss"' in text and "update:W1" not in text


def test_edges_carry_shapes_and_tooltips_the_source_line():
    step, _, _ = sgd_step()
    text = viz.to_dot(step)
    assert 'label="(N, 3)"' in text and 'label="(2, 3)"' in text
    relu = next(line for line in node_lines(text).values() if 'label="relu(·)"' in line)
    assert re.search(r"test_viz\.py:\d+\\n.*the hidden layer's line", relu)


def test_scalar_constants_are_written_into_labels():
    x = gn.placeholder("x", (None, 2))
    text = viz.to_dot(x * 0.5 + 2.0)
    assert 'label="multiply(·, 0.5)"' in text and 'label="add(·, 2)"' in text
    assert "constant" not in text


def test_graph_nodes_and_lists_are_drawn_too():
    x = gn.placeholder("x", (None, 2))
    a, b = gn.exp(x), gn.tanh(x)
    whole = viz.to_dot(gn.get_default_graph())
    assert 'label="exp(·)"' in whole and 'label="tanh(·)"' in whole
    assert 'label="tanh(·)"' not in viz.to_dot(a)
    assert len(node_lines(viz.to_dot([a, b]))) == 3
    with pytest.raises(TypeError, match="expected a compiled function"):
        viz.to_dot(42)


@needs_dot
def test_names_with_quotes_and_backslashes_are_escaped():
    x = gn.placeholder('x"1\\n', (None, 2))
    text = viz.to_dot(gn.sum(x))
    assert 'label="x\\"1\\\\n"' in text
    dot_ok(text)


@needs_dot
def test_render_writes_svg_and_png(tmp_path):
    text = viz.to_dot(gn.relu(gn.placeholder("x", (None, 2))))
    assert open(viz.render(text, str(tmp_path / "g.svg"))).read().lstrip().startswith("<?xml")
    with open(viz.render(text, str(tmp_path / "g.png")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="use one of"):
        viz.render(text, str(tmp_path / "g.jpeg"))


def test_render_without_graphviz_writes_dot_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    text = viz.to_dot(gn.relu(gn.placeholder("x", (None, 2))))
    with pytest.warns(UserWarning, match="Graphviz 'dot' not found"):
        written = viz.render(text, str(tmp_path / "g.svg"))
    assert written == str(tmp_path / "g.dot") and open(written).read() == text
    assert viz.to_svg(text) is None


def assert_self_contained(page: str) -> None:
    """No reference a browser would fetch: no remote src/href, no scripts, stylesheets or CSS urls."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page


@needs_dot
def test_report_is_self_contained_with_graph_passes_and_code(tmp_path):
    step, _, _ = sgd_step()
    page = open(write_report(step, str(tmp_path / "r.html"))).read()
    assert_self_contained(page)
    assert "<svg" in page and "<style>" in page
    for before, record in zip(step.records, step.records[1:]):
        assert f"<tr><td>{record.name}</td><td>{before.nodes}</td><td>{record.nodes}</td>" in page
    assert "numpy backend generates no code" in page

    step.executable.artifacts = lambda: {"kernel0.ll": "define void @k(<16 x float> %a) ; a < b & c"}
    page = open(write_report(step, str(tmp_path / "r.html"))).read()
    assert "kernel0.ll (1 lines)" in page and "&lt;16 x float&gt; %a) ; a &lt; b &amp; c" in page
    assert_self_contained(page)


def test_report_without_graphviz_shows_the_dot_text(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    step, _, _ = sgd_step()
    page = open(write_report(step, str(tmp_path / "r.html"))).read()
    assert "<svg" not in page and "digraph graphnet" in page and "install the <code>graphviz</code>" in page
    assert_self_contained(page)


def test_dump_writes_every_pass_report_and_summary(tmp_path):
    step, _, _ = sgd_step()
    folder = step.dump(str(tmp_path / "d"))
    files = set(os.listdir(folder))
    for i, record in enumerate(step.records):
        assert {f"{i:02d}_{record.name}.txt", f"{i:02d}_{record.name}.dot"} <= files
    assert {"graph.dot", "report.html", "summary.txt"} <= files
    assert ("graph.svg" in files) == (shutil.which("dot") is not None)
    summary = open(os.path.join(folder, "summary.txt")).read()
    assert "backend: numpy" in summary and "updates: W1, b1, W2" in summary
    assert f"{len(step.records) - 1:02d} {step.records[-1].name}" in summary


def test_graphnet_dump_env_gives_each_compile_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNET_DUMP", str(tmp_path))
    x = gn.placeholder("x", (None, 2))
    first = gn.compile(gn.exp(x), backend="numpy")
    gn.compile(gn.exp(x), backend="numpy")  # the same program again: a new folder, not an overwrite
    gn.compile(gn.tanh(x), backend="numpy")
    folders = sorted(os.listdir(tmp_path))
    assert [f[:3] for f in folders] == ["00_", "01_", "02_"]
    assert folders[0][3:] == folders[1][3:] == first.program.hash()[:8] != folders[2][3:]
    assert all(os.path.isfile(tmp_path / f / "report.html") for f in folders)


def test_forward_only_function_has_no_backward_or_update_nodes():
    x = gn.placeholder("x", (None, 2))
    W = gn.variable("W", np.ones((2, 2), np.float32))
    fn = gn.compile(gn.softmax(x @ W), backend="numpy")
    assert set(viz.classify(fn.program).values()) == {"input", "forward"}
    assert "backward" not in viz.to_dot(fn)


ARTIFACTS = {
    "loopir.txt": "b0 input x: float32 (N,)\n\nkernel k0_add over v0<N  order v0\n  b1[v0] = add(b0[v0], 1.0)  # add_3 at m.py:1\n"
                  "kernel k1_exp over v0<N  order v0\n  b2[v0] = exp(b1[v0])  # exp_4 at m.py:2\nfetch b2\n",
    "module.ll": 'define internal void @"k0_add_body"(i64 %"N")\n{\nentry:\n  ret void\n}\n\n'
                 'define void @"k0_add"(i64 %".1")\n{\n  ret void\n}\ndefine void @"graphnet_step"(i64 %".1")\n{\n}\n',
    "module.s": "\t.text\nk0_add:\n\tret\n.Lfunc_end0:\n\t.size\tk0_add, .Lfunc_end0-k0_add\nk1_exp:\n\tvzeroupper\n"
                ".Lfunc_end1:\n",
    "kernels.cl": "__kernel void k1_exp(__global float *b2)\n{\n  b2[0] = 1;\n}\n",
}


def test_kernel_code_splits_each_file_by_kernel():
    code = kernel_code(ARTIFACTS)
    assert list(code) == ["k0_add", "k1_exp"]
    assert [file for file, _ in code["k0_add"]] == ["loopir.txt", "module.ll", "module.ll", "module.s"]
    assert code["k0_add"][0][1].splitlines() == ARTIFACTS["loopir.txt"].splitlines()[2:4]
    assert code["k0_add"][1][1].startswith('define internal void @"k0_add_body"') and code["k0_add"][1][1].endswith("}")
    assert code["k0_add"][3][1] == "k0_add:\n\tret\n.Lfunc_end0:"
    assert code["k1_exp"] == [("loopir.txt", ARTIFACTS["loopir.txt"].splitlines()[4] + "\n" +
                               ARTIFACTS["loopir.txt"].splitlines()[5]),
                              ("module.s", "k1_exp:\n\tvzeroupper\n.Lfunc_end1:"),
                              ("kernels.cl", ARTIFACTS["kernels.cl"].strip())]
    assert kernel_code({"module.ll": ARTIFACTS["module.ll"]}) == {}  # no loop IR: no kernels to group by


def test_report_groups_code_by_kernel_and_links_clusters(tmp_path):
    step, _, _ = sgd_step()
    step.executable.artifacts = lambda: ARTIFACTS
    page = open(write_report(step, str(tmp_path / "r.html"))).read()
    assert '<details id="kernel-k0_add"><summary>kernel k0_add (loopir.txt, module.ll, module.ll, module.s)' in page
    assert "<h3>Whole files</h3>" in page and "kernels.cl (5 lines)" in page
    assert_self_contained(page)


def test_llvm_kernels_become_clusters_linked_to_their_code(tmp_path):
    pytest.importorskip("codegen.llvm.backend")
    x = gn.placeholder("x", (None, 2))
    W = gn.variable("W", gn.init.glorot_uniform((2, 3), seed=0))
    b = gn.variable("b", np.zeros(3, np.float32))
    loss = gn.mean(gn.relu(x @ W + b))
    step = gn.compile(loss, updates=[(W, W - 0.1 * gn.gradients(loss, W))], backend="llvm")
    kernels = step.kernel_map()
    assert kernels and set(kernels) <= set(step.program.nodes())
    add = next(n for n in step.program.nodes() if n.op.name == "relu").inputs[0]
    matmul = add.inputs[0]
    assert kernels[matmul] == kernels[add]  # the bias add is fused into the matmul's kernel
    text = viz.to_dot(step)
    assert f"label={viz.quote(kernels[add])}" in text
    page = open(write_report(step, str(tmp_path / "r.html"))).read()
    if shutil.which("dot"):
        assert f'xlink:href="#kernel-{kernels[add]}"' in page
    assert f'<details id="kernel-{kernels[add]}">' in page
    assert_self_contained(page)
