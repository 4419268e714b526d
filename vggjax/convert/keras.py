"""Keras VGG16/VGG19 weights into a vggjax model.

Keras (channels-last) already uses HWIO kernels and the (h, w, c) flatten order, so the
arrays are copied as they are, layer by layer in model order. Files (``.weights.h5``,
``.keras``, and the legacy Keras-2 ``.h5`` weights that ``keras.applications`` downloads)
are read with h5py; no Keras object is deserialised.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from typing import Any

import jax.numpy as jnp
import numpy as np

from vggjax.convert.common import _arch_hint, _check_arch, _first_line, _make, _shape
from vggjax.errors import CheckpointError, ConfigError, VggjaxError
from vggjax.models.vgg import ARCHS, VGG

_KERAS_ARCHS = {13: "vgg16", 16: "vgg19"}  # conv count -> architecture (Keras has no BN VGG)

Layers = list[tuple[str, list[np.ndarray]]]  # (layer name, [kernel, bias]) in model order


def _h5_tensors(h5: Any, origin: str) -> Layers:
    """``[(layer name, [kernel, bias])]`` in model order from a Keras 3 or legacy Keras-2
    weights file."""
    if "layers" in h5 and hasattr(h5["layers"], "keys"):
        return _keras3_tensors(h5["layers"])
    root = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" not in root.attrs:
        raise CheckpointError(
            f"{origin} is not a Keras weights file "
            "(no 'layers' group and no 'layer_names' attribute)"
        )
    out = []
    for raw in root.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        g = root[name]
        names = [
            n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])
        ]
        if names:
            out.append((name, [np.asarray(g[n]) for n in names]))
    return out


def _keras3_tensors(groups: Any) -> Layers:
    """Keras 3 (.weights.h5 / model.weights.h5 in a .keras zip): layers/<conv2d_N>/vars/<i>."""
    layers: list[tuple[tuple[str, int], str, list[np.ndarray]]] = []
    for name in groups:
        g = groups[name]
        if "vars" not in g or not len(g["vars"]):
            continue
        m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
        vals = [np.asarray(g["vars"][str(i)]) for i in range(len(g["vars"]))]
        layers.append(((m.group(1), int(m.group(2) or 0)), name, vals))
    # Keras names sibling layers of one class conv2d, conv2d_1, ... in model order.
    layers.sort(key=lambda t: (t[0][0] != "conv2d", t[0]))
    return [(name, vals) for _, name, vals in layers]


def _keras_tensors(source: Any) -> tuple[Layers, str]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return _keras_file_tensors(path), path
    layers = getattr(source, "layers", None)
    if layers is None:
        raise CheckpointError(
            f"expected a Keras model or a Keras weights file, got a {type(source).__name__}"
        )
    out = [(layer.name, [np.asarray(w) for w in layer.get_weights()]) for layer in layers]
    return [(n, w) for n, w in out if w], f"the Keras model {getattr(source, 'name', '')!r}"


def _keras_file_tensors(path: str) -> Layers:
    """The layers of a ``.weights.h5``, ``.keras`` (a zip) or legacy ``.h5`` file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"--input {path}: no such file")
    try:
        import h5py
    except ImportError:
        raise CheckpointError("reading Keras files needs h5py (pip install h5py)") from None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if "model.weights.h5" not in z.namelist():
                    raise CheckpointError(
                        f"{path} is a zip file without model.weights.h5: not a .keras model file"
                    )
                data = io.BytesIO(z.read("model.weights.h5"))
            with h5py.File(data, "r") as h5:
                return _h5_tensors(h5, path)
        with h5py.File(path, "r") as h5:
            return _h5_tensors(h5, path)
    except VggjaxError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises OSError/KeyError on foreign files
        raise CheckpointError(
            f"cannot read {path} as a Keras weights file: {_first_line(e)}"
        ) from None


def _conv_and_dense(layers: Layers, origin: str) -> tuple[Layers, Layers]:
    """The conv and the dense layers; any other layer is not VGG's."""
    convs = [(n, w) for n, w in layers if len(w) == 2 and np.ndim(w[0]) == 4]
    dense = [(n, w) for n, w in layers if len(w) == 2 and np.ndim(w[0]) == 2]
    other = [n for n, w in layers if not (len(w) == 2 and np.ndim(w[0]) in (2, 4))]
    if other:
        raise CheckpointError(
            f"{origin} has a layer {other[0]!r} that VGG does not have (only conv and dense layers)"
        )
    return convs, dense


def _check_keras_arch(arch: str | None, convs: Layers, dense: Layers, origin: str) -> str:
    """``arch`` as a Keras architecture, or a one-line error on what the file holds."""
    if arch is None:
        raise CheckpointError(
            f"{origin} has {len(convs)} conv layers; Keras VGG16 has 13 and VGG19 16"
        )
    _check_arch(arch)
    if ARCHS[arch][1]:
        raise ConfigError(f"Keras has no BatchNorm VGG; use --arch vgg16 or vgg19, not {arch}")
    if len(dense) not in (0, 3):
        raise CheckpointError(
            f"{origin} has {len(dense)} dense layers; a VGG top has 3 (fc1, fc2, predictions), "
            "a headless model 0"
        )
    return arch


def _keras_head(convs: Layers, dense: Layers) -> tuple[dict[str, Any], int]:
    """``(head_options, classes)`` of the ``fc`` head that a Keras top fits."""
    last = convs[-1][1][0].shape[-1] if convs else 512
    fc1 = dense[0][1][0]
    pool = math.isqrt(max(1, fc1.shape[0] // last))
    head_options = {
        "hidden": int(fc1.shape[1]),
        "pool_size": pool if pool * pool * last == fc1.shape[0] else 7,
    }
    return head_options, int(dense[2][1][0].shape[1])


def _targets(model: VGG, has_head: bool) -> tuple[list[str], list[Any]]:
    """The vggjax layers the Keras layers fill, in model order, and their names."""
    names = [name for kind, name in model.features.plan if kind == "conv"]
    targets = [getattr(model.features, name) for name in names]
    if has_head:
        names += ["fc6", "fc7", "fc8"]
        targets += [model.head.fc6, model.head.fc7, model.head.fc8]
    return names, targets


def _check_keras_shapes(
    names: list[str],
    targets: list[Any],
    convs: Layers,
    dense: Layers,
    arch: str,
    origin: str,
    hint: str,
) -> None:
    n_conv = len(targets) - len(dense)
    # Shapes first (in model order): the first differing layer names both shapes.
    for name, layer, (kname, (kernel, bias)) in zip(names, targets, convs[:n_conv] + dense):
        for what, have, need in (
            ("kernel", kernel.shape, tuple(layer.kernel.get_value().shape)),
            ("bias", bias.shape, tuple(layer.bias.get_value().shape)),
        ):
            if tuple(have) != need:
                raise CheckpointError(
                    f"{origin} does not fit {arch}: {kname} {what} has shape {_shape(have)} "
                    f"in the file but {arch}'s {name} needs {_shape(need)}{hint}"
                )
    if len(convs) < n_conv:
        name = names[len(convs)]
        raise CheckpointError(
            f"{origin} does not fit {arch}: it has {len(convs)} conv layers, {arch} needs {n_conv} "
            f"(missing {name}, kernel {_shape(targets[len(convs)].kernel.get_value().shape)}){hint}"
        )
    if len(convs) > n_conv:
        kname, (kernel, _) = convs[n_conv]
        raise CheckpointError(
            f"{origin} does not fit {arch}: unknown layer {kname} with kernel "
            f"{_shape(kernel.shape)}{hint}"
        )


def from_keras(
    source: Any,
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    dropout: float = 0.5,
    seed: int = 0,
) -> VGG:
    """Build vggjax VGG-16/19 holding ``keras.applications.VGG16``/``VGG19`` weights, in
    eval mode.

    ``source`` is the Keras model or a path to its weights: ``.weights.h5``
    (``model.save_weights``), ``.keras`` (``model.save``; only its weights are read), or a
    legacy Keras-2 ``.h5`` weights file. ``arch`` (``"vgg16"``/``"vgg19"``) defaults to the
    one with as many convs. Without the top (``include_top=False``) only the backbone is
    filled and the ``fc`` head (``num_classes``, default 1000) keeps a fresh random
    initialisation. The model expects Keras' "caffe" inputs: BGR, 0..255, minus the
    ImageNet mean (``vggjax.features.normalize(x, "caffe")``). Raises CheckpointError
    naming the first layer whose shape differs.
    """
    layers, origin = _keras_tensors(source)
    convs, dense = _conv_and_dense(layers, origin)
    guess = _KERAS_ARCHS.get(len(convs))
    arch = _check_keras_arch(arch or guess, convs, dense, origin)
    has_head = bool(dense)
    head_options, classes = _keras_head(convs, dense) if has_head else ({}, num_classes or 1000)
    model = _make(
        has_head,
        seed,
        arch,
        num_classes=classes,
        in_channels=int(convs[0][1][0].shape[2]) if convs else 3,
        head="fc",
        head_options=head_options,
        dropout=dropout,
    )
    names, targets = _targets(model, has_head)
    _check_keras_shapes(names, targets, convs, dense, arch, origin, _arch_hint(guess, arch))
    for layer, (_, (kernel, bias)) in zip(targets, convs + dense):
        layer.kernel.set_value(jnp.asarray(kernel, layer.kernel.get_value().dtype))
        layer.bias.set_value(jnp.asarray(bias, layer.bias.get_value().dtype))
    model.eval()
    model.has_imported_head = has_head
    return model
