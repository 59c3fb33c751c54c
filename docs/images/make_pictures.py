"""Regenerate the README's pictures: `python docs/images/make_pictures.py` from the repository root.

The pass-the-class model is written out here (as in graphnet/demo.py) so that every node's
tooltip points at the line of this file that created it.
"""
import os

import graphnet as gn
from graphnet.bench.grid import build_grid_model

HERE = os.path.dirname(os.path.abspath(__file__))

inputs = gn.layers.Input(shape=(2,))
hidden = gn.layers.Dense(3, activation="relu")(inputs)
outputs = gn.layers.Dense(1, activation="sigmoid")(hidden)
model = gn.Model(inputs, outputs)
model.compile(optimizer=gn.optim.Adam(lr=1e-2), loss="binary_crossentropy", metrics=["accuracy"], backend="numpy")
dot_text = gn.viz.to_dot(model.train_function, title="pass the class: one training step (forward, backward, Adam)")
print(gn.viz.render(dot_text, os.path.join(HERE, "pass_the_class_train.svg")))

tiny = build_grid_model("tiny", backend="llvm").step
dot_text = gn.viz.to_dot(tiny, title="grid model tiny (2-3-1, Adam): the LLVM backend's kernels")
print(gn.viz.render(dot_text, os.path.join(HERE, "tiny_llvm_kernels.svg")))
