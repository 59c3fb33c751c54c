"""A realistic Keras script (examples/keras_script.py) runs on graphnet with only its import lines
changed: Sequential and functional models, string names, validation_split, EarlyStopping with
restore_best_weights and verbose=1, evaluate/predict with verbose=0, summary, save/load, class_weight.
It runs as a user runs it: a fresh process, the default (LLVM) backend."""
import os
import re
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "keras_script.py")


def test_only_the_import_lines_are_graphnets():
    with open(SCRIPT) as f:
        lines = f.read().split('"""', 2)[2].splitlines()  # the code after the docstring
    mentions = [line for line in lines if "graphnet" in line]
    assert mentions == ["import graphnet as keras  # Keras: from tensorflow import keras",
                        "from graphnet import layers  # Keras: from tensorflow.keras import layers"]
    assert not any(re.search(r"\bgn\.|backend=|\blr=|betas=", line) for line in lines)


def test_keras_script_runs_and_learns():
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'Model: "sequential"' in out and " dense (Dense)                (None, 64)                1344" in out
    assert 'Model: "classifier"' in out and "Total params: 5,699" in out
    assert re.search(r"Epoch \d+: early stopping\nRestoring model weights from the end of the best epoch: \d+\.", out)
    assert re.search(r"^Epoch 1/200 - 25 steps - [\d.]+s - loss: \d\.\d{4} - accuracy: \d\.\d{4} - "
                     r"val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4}$", out, re.M)
    sequential = re.search(r"sequential: .* test accuracy ([\d.]+), recall of the rare class ([\d.]+)", out)
    assert float(sequential.group(1)) > 0.9 and float(sequential.group(2)) > 0.8
    functional = re.search(r"functional: 5699 parameters, test accuracy ([\d.]+)", out)
    assert float(functional.group(1)) > 0.85
    assert "restored Sequential from binary.keras: same predictions" in out
    assert "restored the functional model: same layers and weights" in out
    assert "Keras cannot" in result.stderr  # the .keras/.h5 names hold graphnet's archive, and it says so
