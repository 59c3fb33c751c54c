"""Smoke tests: each example's main() runs end to end (numpy backend, few epochs) and reaches its goal."""
import importlib.util
import os
import sys

import pytest

BACKEND = "numpy"  # the code generator every model in this file compiles with
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pass_the_class(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    probability = load("pass_the_class").main(["--epochs", "40", "--out", str(tmp_path), "--quiet"],
                                              backend=BACKEND)
    assert 0.5 < probability < 0.95  # near the boundary, on the passing side of the synthetic rule
    out = capsys.readouterr().out
    assert f"P(pass | 4 lectures, 5 hours) = {probability:.3f}" in out
    assert (tmp_path / "pass_the_class.png").stat().st_size > 10_000


def test_pass_the_class_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    load("pass_the_class").main(["--epochs", "3", "--out", str(tmp_path), "--quiet"], backend=BACKEND)
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not os.listdir(tmp_path)


def test_digits_reaches_95_percent():
    accuracy = load("digits").main(["--epochs", "20", "--quiet"], backend=BACKEND)
    assert accuracy >= 0.95


def test_cnn_digits_reaches_98_percent_and_draws_its_filters(tmp_path):
    picture = tmp_path / "filters.png"
    accuracy = load("cnn_digits").main(["--quiet", "--filters", str(picture)], backend=BACKEND)
    assert accuracy >= 0.98
    assert picture.stat().st_size > 500


def test_optimizers(tmp_path):
    pytest.importorskip("matplotlib")
    curves = load("optimizers").main(["--epochs", "8", "--out", str(tmp_path)], backend=BACKEND)
    assert set(curves) == {"sgd", "momentum", "adagrad", "adadelta", "rmsprop", "adam", "adamw"}
    for name, losses in curves.items():
        assert len(losses) == 8 and losses[-1] < losses[0], name
    assert (tmp_path / "optimizers.png").stat().st_size > 10_000
