"""Keras 3 VGG16/VGG19 (random init, JAX backend) -> vggjax: logits and features equal Keras'.

Keras picks its backend when it is first imported and TensorFlow may already be imported in
this pytest worker, so Keras runs in a subprocess with KERAS_BACKEND=jax: it builds the
models, writes `.weights.h5`, `.keras` and legacy-`.h5` files and its own outputs; this
process converts the files and compares.
"""

import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from subproc import ROOT, cpu_env

from vggjax import convert
from vggjax.errors import CheckpointError

pytest.importorskip("h5py")


WORKER = r"""
import os, sys
import numpy as np
import keras
from keras.src.legacy.saving import legacy_h5_format
import h5py
from vggjax import convert

out = sys.argv[1]
keras.utils.set_random_seed(0)
full = keras.applications.VGG16(weights=None, include_top=True, classifier_activation=None)
x = np.random.default_rng(0).uniform(-120, 130, (2, 224, 224, 3)).astype(np.float32)
logits = np.asarray(full(x, training=False))
full.save_weights(os.path.join(out, "vgg16.weights.h5"))
in_memory = np.asarray(convert.from_keras(full)(x))  # the in-memory path
bare = keras.applications.VGG19(weights=None, include_top=False)
bare.save(os.path.join(out, "vgg19_notop.keras"))
# Keras-2 format (what keras.applications downloads)
with h5py.File(os.path.join(out, "vgg19_notop_legacy.h5"), "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, bare)
xs = x[:, :64, :80]
pool5 = np.asarray(bare(xs))
np.savez(os.path.join(out, "ref.npz"), x=x, logits=logits, in_memory=in_memory, xs=xs, pool5=pool5)
"""


# Compiled forwards, one program per architecture (the three VGG-19s share one): op by op,
# every layer's ops compile one at a time, which takes longer than compiling the forward once.
logits_of = nnx.jit(lambda model, x: model(x))
features_of = nnx.jit(lambda model, x: model(x, return_features=True)[1])


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.slow
def test_keras_vgg16_and_vgg19_parity(tmp_path):
    pytest.importorskip("keras")
    r = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path)],
        env=cpu_env(KERAS_BACKEND="jax"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ref = np.load(tmp_path / "ref.npz")
    assert rel_diff(ref["in_memory"], ref["logits"]) <= 1e-4
    model = convert.from_keras(tmp_path / "vgg16.weights.h5", "vgg16")
    assert model.num_classes == 1000 and model.has_imported_head
    logits = np.asarray(logits_of(model, ref["x"]))
    assert rel_diff(logits, ref["logits"]) <= 1e-4, rel_diff(logits, ref["logits"])
    assert np.abs(ref["logits"]).max() > 0
    for name in ("vgg19_notop.keras", "vgg19_notop_legacy.h5"):
        bare = convert.from_keras(tmp_path / name)  # arch from the conv count
        assert bare.name == "vgg19" and not bare.has_imported_head
        feats = features_of(bare, ref["xs"])
        assert rel_diff(feats["pool5"], ref["pool5"]) <= 1e-4, name
    # A file of the other architecture names the first differing layer with both shapes.
    with pytest.raises(CheckpointError) as e:
        convert.from_keras(tmp_path / "vgg19_notop.keras", "vgg16")
    msg = str(e.value)
    assert (
        "conv2d_7 kernel has shape (3, 3, 256, 256)" in msg
        and "conv4_1 needs (3, 3, 256, 512)" in msg
        and "use --arch vgg19" in msg
    )
    # The CLI writes a backbone-only checkpoint that convert.load reads back.
    assert (
        convert.main(
            [
                "--from",
                "keras",
                "--arch",
                "vgg19",
                "--input",
                str(tmp_path / "vgg19_notop.keras"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    loaded = convert.load(tmp_path / "out")
    again = features_of(loaded, ref["xs"])
    np.testing.assert_array_equal(np.asarray(again["pool5"]), np.asarray(feats["pool5"]))
