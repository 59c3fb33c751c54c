"""The `graphnet` command end to end, in a subprocess as a user runs it."""
import os
import subprocess
import sys
import textwrap

import pytest

from graphnet.cli import main
from graphnet.bench.grid import build_grid_model
from graphnet.bench.peers import GRID, grid_data


def graphnet(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphnet.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, stdin=subprocess.DEVNULL)


def assert_one_line(err: str, words) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0]


def assert_usage_error(done: subprocess.CompletedProcess, *words: str) -> None:
    """Exit status 2 and one line on stderr naming the problem, no traceback."""
    assert done.returncode == 2, done.stderr
    assert_one_line(done.stderr, words)


def test_help_lists_the_commands_and_each_command_has_help():
    done = graphnet("--help")
    assert done.returncode == 0
    for command in ("demo", "dump", "bench"):
        assert command in done.stdout
    assert "--epochs" in graphnet("demo", "--help").stdout
    dump_help = graphnet("dump", "--help").stdout
    assert "--config" in dump_help and "defines build()" in dump_help
    bench = graphnet("bench", "--help")
    assert bench.returncode == 0 and "--configs" in bench.stdout


def test_demo_trains_and_answers_for_the_student():
    done = graphnet("demo", "--backend", "numpy", "--epochs", "3")
    assert done.returncode == 0, done.stderr
    assert "Epoch 3/3" in done.stdout + done.stderr
    assert "4 lectures and spends 5 hours" in done.stdout and "probability 0." in done.stdout


def test_dump_config_writes_pictures_code_and_report(tmp_path):
    out = tmp_path / "tiny"
    done = graphnet("dump", "--config", "tiny", "--out", str(out), "--backend", "numpy")
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    files = set(os.listdir(out))
    assert {"00_input.txt", "00_input.dot", "graph.dot", "report.html", "summary.txt"} <= files
    summary = (out / "summary.txt").read_text()
    assert "backend: numpy" in summary and "updates: W1, W1/adam_m" in summary
    assert "update:W1" in (out / "graph.dot").read_text()  # the optimizer-fusion regions as clusters


def test_dump_script_follows_the_build_convention(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(textwrap.dedent("""
        import graphnet as gn

        def build(backend="numpy"):
            x = gn.placeholder("x", (None, 4))
            return {"act": gn.compile(gn.tanh(x), backend=backend), "exp": gn.compile(gn.exp(x), backend=backend)}

        if __name__ == "__main__":
            raise SystemExit("the training part must not run under graphnet dump")
    """))
    out = tmp_path / "out"
    done = graphnet("dump", "--script", str(script), "--out", str(out), "--backend", "numpy")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["00_act", "01_exp"]
    assert "tanh" in (out / "00_act" / "graph.dot").read_text()
    assert os.path.isfile(out / "01_exp" / "report.html")


def test_usage_errors_exit_2_with_one_line(tmp_path):
    assert_usage_error(graphnet("demo", "--bogus"), "unrecognized arguments: --bogus")
    assert_usage_error(graphnet("dump", "--script", "no/such/file.py", "--out", str(tmp_path)),
                       "no such script: no/such/file.py")


@pytest.mark.parametrize("args, words", [
    (["demo", "--epochs", "-3"], ["--epochs", "positive"]),
    (["demo", "--backend", "cuda"], ["invalid choice: 'cuda'"]),
    (["dump", "--config", "huge", "--out", "x"], ["invalid choice: 'huge'"]),
    (["dump", "--config", "tiny"], ["--out"]),
    (["dump", "--config", "tiny", "--script", "m.py", "--out", "x"], ["not allowed with argument"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    ([], ["command"]),
])
def test_more_usage_errors_in_process(args, words, capsys):
    """The same entry point as the subprocess tests, without a process start per case."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert_one_line(capsys.readouterr().err, words)


def test_script_without_build_and_out_that_is_a_file(tmp_path, capsys):
    script = tmp_path / "nothing.py"
    script.write_text("x = 1\n")
    assert main(["dump", "--script", str(script), "--out", str(tmp_path / "o")]) == 2
    assert_one_line(capsys.readouterr().err, ["defines no build()"])
    (tmp_path / "file").write_text("")
    assert main(["dump", "--config", "tiny", "--out", str(tmp_path / "file")]) == 2
    assert_one_line(capsys.readouterr().err, ["not a folder"])
    script.write_text("def build():\n    return 42\n")
    assert main(["dump", "--script", str(script), "--out", str(tmp_path / "o")]) == 2
    assert_one_line(capsys.readouterr().err, ["returned int, not compiled functions"])
    assert main(["dump", "--script", str(script), "--out", str(tmp_path / "o"), "--backend", "numpy"]) == 2
    assert_one_line(capsys.readouterr().err, ["takes no `backend` argument"])


def test_grid_models_match_the_benchmark_grid():
    for name, config in GRID.items():
        if name in ("large", "wide"):
            continue  # same code path, seconds of numpy time
        model = build_grid_model(name, backend="numpy")
        x, y = grid_data(config)
        (first,) = model.step(**model.feeds(x, y))
        (second,) = model.step(**model.feeds(x, y))
        assert first.shape == () and second < first  # one Adam step lowers the loss on the same batch
        weights = sorted(v.name for v in model.graph.variables.values() if v.trainable)
        assert len(weights) == 2 * (len(config.layers) - 1)
    with pytest.raises(ValueError, match="unknown grid configuration 'huge'"):
        build_grid_model("huge", backend="numpy")


def test_bench_without_the_benchmark_module_exits_2(monkeypatch, capsys):
    for name in ("graphnet.bench", "graphnet.bench.runner"):  # make the import fail as if absent, even
        monkeypatch.setitem(sys.modules, name, None)           # after another test imported them
    assert main(["bench", "--configs", "tiny"]) == 2
    assert_one_line(capsys.readouterr().err, ["graphnet.bench is not part of this installation"])
