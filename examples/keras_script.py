"""A Keras script, run on graphnet with only its import lines changed.

Written as a Keras user writes one: a Sequential binary classifier with input_shape= on its first
layer, class weights for imbalanced labels, validation_split, EarlyStopping that restores the best
weights and says so, evaluate and predict with verbose=0, summary, save to .keras and load back;
then a functional multi-class model with named layers and sparse integer labels. The two import
lines are the only graphnet-specific lines (Keras: `from tensorflow import keras` and
`from tensorflow.keras import layers`).

    python examples/keras_script.py
"""
import os
import tempfile

import numpy as np

import graphnet as keras  # Keras: from tensorflow import keras
from graphnet import layers  # Keras: from tensorflow.keras import layers

# ---- data: 20 features, an imbalanced binary label and a 3-class label ----------------------------
rng = np.random.default_rng(0)
x = rng.normal(size=(1200, 20)).astype("float32")
score = x @ rng.normal(size=20)
y_binary = (score > 2.0).astype("int32")  # about a quarter positive
y_class = np.digitize(score, [-1.5, 1.5])  # classes 0, 1, 2
x_train, x_test = x[:1000], x[1000:]

# ---- Sequential: binary classifier with class weights ----------------------------------------------
model = keras.Sequential([
    layers.Dense(64, activation="relu", input_shape=(20,)),
    layers.Dropout(0.2),
    layers.Dense(32, activation="relu"),
    layers.Dense(1, activation="sigmoid"),
])
model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="binary_crossentropy",
              metrics=["accuracy"])
model.summary()

negatives, positives = np.bincount(y_binary[:1000])
class_weight = {0: 1000 / (2 * negatives), 1: 1000 / (2 * positives)}
early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True, verbose=1)
history = model.fit(x_train, y_binary[:1000], batch_size=32, epochs=200, validation_split=0.2,
                    callbacks=[early_stopping], class_weight=class_weight, verbose=2)
loss, accuracy = model.evaluate(x_test, y_binary[1000:], verbose=0)
probabilities = model.predict(x_test, verbose=0)
recall = np.mean(probabilities[y_binary[1000:] == 1] > 0.5)
print(f"sequential: {len(history.history['loss'])} epochs, best val_loss {min(history.history['val_loss']):.4f}, "
      f"test accuracy {accuracy:.3f}, recall of the rare class {recall:.3f}")

folder = tempfile.mkdtemp()
path = os.path.join(folder, "binary.keras")
model.save(path)
restored = keras.models.load_model(path)
np.testing.assert_allclose(restored.predict(x_test, verbose=0), probabilities, rtol=1e-6)
assert restored.evaluate(x_test, y_binary[1000:], verbose=0) == [loss, accuracy]
print(f"restored {type(restored).__name__} from {os.path.basename(path)}: same predictions")

# ---- functional: three classes, sparse labels ------------------------------------------------------
inputs = keras.Input(shape=(20,), name="features")
hidden = layers.Dense(64, activation="relu", name="hidden_1")(inputs)
hidden = layers.Dense(64, activation="relu", name="hidden_2")(hidden)
outputs = layers.Dense(3, activation="softmax", name="label")(hidden)
classifier = keras.Model(inputs=inputs, outputs=outputs, name="classifier")
classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
classifier.summary()
history = classifier.fit(x_train, y_class[:1000], batch_size=64, epochs=100, validation_split=0.2, verbose=0,
                         callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True, verbose=1)])
loss, accuracy = classifier.evaluate(x_test, y_class[1000:], verbose=0)
predicted = classifier.predict(x_test, verbose=0).argmax(axis=1)
print(f"functional: {classifier.count_params()} parameters, test accuracy {accuracy:.3f}, "
      f"argmax agreement {np.mean(predicted == y_class[1000:]):.3f}")

classifier.save(os.path.join(folder, "classifier.h5"))
restored = keras.models.load_model(os.path.join(folder, "classifier.h5"))
assert [layer.name for layer in restored.layers] == ["features", "hidden_1", "hidden_2", "label"]
np.testing.assert_allclose(restored.get_layer("label").get_weights()[0], classifier.get_layer("label").get_weights()[0])
print("restored the functional model: same layers and weights")
