"""Weights in and out: torchvision and Keras VGG checkpoints ⇄ vggjax, and fc → fc_conv.

Command line (writes an orbax checkpoint that ``python -m vggjax.train
--config.init_from=DIR`` fine-tunes from)::

    python -m vggjax.convert --from torchvision --arch vgg16 --input vgg16-397923af.pth --output weights/vgg16
    python -m vggjax.convert --from keras --arch vgg16 --input vgg16.weights.h5 --output weights/vgg16_keras
    python -m vggjax.convert ... --head fc_conv      # fc6 as a 7x7 conv: dense evaluation on large images

Library::

    model = vggjax.convert.from_torchvision(torchvision_model_or_state_dict_or_path, "vgg16")
    state_dict = vggjax.convert.to_torchvision(model)      # exact inverse
    model = vggjax.convert.from_keras(keras_model_or_path)  # VGG16 / VGG19, with or without top
    dense = vggjax.convert.to_fc_conv(model)                # same weights, fc6 as a conv
    vggjax.convert.save(model, "weights/vgg16"); model = vggjax.convert.load("weights/vgg16")

Layouts: PyTorch convs are OIHW, vggjax (Flax) HWIO; PyTorch flattens the 7×7 pooled map in
(c, h, w) order before ``classifier.0``, vggjax in (h, w, c) order (NHWC), so fc6's input
axis is permuted; BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` become
``scale``/``bias``/``mean``/``var``. Keras (channels-last) already uses HWIO kernels and the
(h, w, c) flatten order. PyTorch files are read with ``torch.load(weights_only=True)`` or
from ``.safetensors``; arbitrary pickled objects are refused, never unpickled. Keras files
(``.weights.h5``, ``.keras``, and the legacy Keras-2 ``.h5`` weights that
``keras.applications`` downloads) are read with h5py; no Keras object is deserialised.

Inputs the imported weights expect: torchvision's are RGB in [0, 1] normalised with the
ImageNet mean/std, Keras' are "caffe" style (BGR, 0..255, mean-subtracted); see
:func:`vggjax.features.normalize`. This module is the only place that knows about NCHW.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import math
import os
import re
import sys
import zipfile
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vggjax.errors import CheckpointError, ConfigError, VggjaxError, one_of
from vggjax.freeze import Frozen
from vggjax.models.heads import ConvHead, FCHead
from vggjax.models.vgg import ARCHS, CFGS, VGG, build, scale_width

__all__ = [
    "from_torchvision",
    "to_torchvision",
    "from_keras",
    "to_fc_conv",
    "save",
    "load",
    "load_torch_state_dict",
    "torchvision_module_names",
    "main",
]

FORMAT = "vggjax.convert/1"
# What the imported weights expect as input (vggjax.features.normalize modes).
PREPROCESSING = {"torchvision": "torch", "keras": "caffe"}
_KERAS_ARCHS = {13: "vgg16", 16: "vgg19"}  # conv count -> architecture (Keras has no BN VGG)
_FC_TORCH = {"fc6": 0, "fc7": 3, "fc8": 6}  # head layer -> index in torchvision's classifier


# ---------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One PyTorch state-dict tensor and the vggjax variable it maps to."""

    key: str  # torchvision state-dict key, e.g. "features.0.weight"
    shape: tuple[int, ...]  # its shape in PyTorch
    variable: nnx.Variable | None  # the vggjax variable (None: num_batches_tracked)
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _torch_indices(model: VGG) -> list[tuple[str, str, int]]:
    """``(kind, vggjax name, torchvision features index)`` for every backbone step."""
    return [(kind, name, i) for i, (kind, name) in enumerate(model.features.plan)]


def _fc_head(model: VGG) -> FCHead | ConvHead | None:
    return model.head if isinstance(model.head, (FCHead, ConvHead)) else None


def _head_pool(head: FCHead | ConvHead) -> int:
    return head.pool_size if isinstance(head, FCHead) else head.kernel_size


def torchvision_module_names(model: VGG) -> dict[str, str]:
    """Map each named tap of ``model(x, return_features=True)`` to torchvision's module path.

    E.g. ``{"conv1_1": "features.0", "relu1_1": "features.1", ..., "pool5": "features.30",
    "avgpool": "avgpool", "fc6": "classifier.0", "relu6": "classifier.1", ...}`` for VGG-16
    with an ``fc`` head: the vggjax output of a tap equals the torchvision module's output
    (transposed from NCHW to NHWC). Only backbone taps for heads other than ``fc``.
    """
    names = {name: f"features.{i}" for _, name, i in _torch_indices(model)}
    if isinstance(model.head, FCHead):
        names["avgpool"] = "avgpool"
        order = ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8")
        names.update({name: f"classifier.{i}" for i, name in enumerate(order)})
    return names


def _entries(model: VGG, *, include_head: bool = True) -> list[_Entry]:
    """The torchvision state dict of ``model`` as a list of :class:`_Entry`, in torchvision's order."""
    out: list[_Entry] = []
    for kind, name, i in _torch_indices(model):
        layer = getattr(model.features, name, None)
        if kind == "conv":
            k = layer.kernel
            h, w, cin, cout = k.get_value().shape
            out.append(
                _Entry(
                    f"features.{i}.weight",
                    (cout, cin, h, w),
                    k,
                    lambda t: t.transpose(2, 3, 1, 0),
                    lambda j: j.transpose(3, 2, 0, 1),
                )
            )
            out.append(_Entry(f"features.{i}.bias", (cout,), layer.bias, _same, _same))
        elif kind == "bn":
            n = layer.scale.get_value().shape[0]
            for tkey, var in (
                ("weight", layer.scale),
                ("bias", layer.bias),
                ("running_mean", layer.mean),
                ("running_var", layer.var),
            ):
                out.append(_Entry(f"features.{i}.{tkey}", (n,), var, _same, _same))
            out.append(_Entry(f"features.{i}.num_batches_tracked", (), None, _same, _same))
    head = _fc_head(model)
    if include_head and head is not None:
        for name, idx in _FC_TORCH.items():
            layer = getattr(head, name)
            shape = layer.kernel.get_value().shape
            cout = shape[-1]
            if name == "fc6":
                p, c = _head_pool(head), model.features.out_channels
                cin = p * p * c

                # fc6 is 100M values: its permutation runs in XLA (tiled, multi-threaded),
                # which is seconds faster than a strided numpy copy.
                def to_jax(t, p=p, c=c, shape=shape):
                    # (out, c, h, w) -> (h, w, c, out): torch's CHW flatten order -> NHWC's HWC.
                    t = jnp.asarray(t)
                    return t.reshape(t.shape[0], c, p, p).transpose(2, 3, 1, 0).reshape(shape)

                def to_torch(j, p=p, c=c):
                    j = jnp.asarray(j)
                    return j.reshape(p, p, c, -1).transpose(3, 2, 0, 1).reshape(j.shape[-1], -1)
            else:
                cin = shape[-2]

                def to_jax(t, shape=shape):
                    return t.T.reshape(shape)

                def to_torch(j):
                    return j.reshape(j.shape[-2], j.shape[-1]).T

            out.append(
                _Entry(f"classifier.{idx}.weight", (cout, cin), layer.kernel, to_jax, to_torch)
            )
            out.append(_Entry(f"classifier.{idx}.bias", (cout,), layer.bias, _same, _same))
    return out


# ------------------------------------------------------------------------ reading files


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 240 else text[:237] + "..."


def _to_numpy(value: Any, key: str, origin: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype not in _numpy_float_dtypes():
            t = t.float()  # bfloat16 has no numpy dtype; float32 is exact for it
        return t.numpy()
    kind = type(value).__name__
    raise CheckpointError(
        f"entry {key!r} of {origin} is a {kind}, not a tensor; a state dict maps parameter names "
        "to tensors (save model.state_dict(), not a training-state dict)"
    )


def _numpy_float_dtypes() -> tuple:
    import torch

    return (torch.float16, torch.float32, torch.float64)


def _plain_state_dict(obj: Any, origin: str) -> dict[str, np.ndarray]:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and DataParallel's ``module.``; tensors → numpy."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{origin} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors); "
            "save model.state_dict() instead"
        )
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and any(str(k).endswith("weight") for k in inner):
            obj = inner
            break
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        name = str(key)
        name = name[len("module.") :] if name.startswith("module.") else name
        out[name] = _to_numpy(value, name, origin)
    return out


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict from a ``.pth``/``.pt`` file or a ``.safetensors`` file, safely.

    ``.pth`` files are loaded with ``torch.load(weights_only=True)``, which only rebuilds
    tensors and plain containers: a file that pickles anything else (a whole
    ``nn.Module``, custom classes) is refused with a CheckpointError and never executed.
    Returns ``{key: numpy array}`` in the file's order (bfloat16 becomes float32).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--input {path}: no such file")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise CheckpointError(
                "reading .safetensors needs the safetensors package: pip install 'vggjax[torch]'"
            ) from None
        try:
            return dict(load_file(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several error types
            raise CheckpointError(
                f"cannot read {path} as a safetensors file: {_first_line(e)}"
            ) from None
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs PyTorch (pip install 'vggjax[torch]'), or convert it to .safetensors"
        ) from None
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if not found:  # not a pickle of allowed types: a damaged or foreign file
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text)
            reason = detail.group(1) if detail else _first_line(e)
            raise CheckpointError(
                f"cannot read {path} as a PyTorch state dict ({reason}); is it a torch.save file?"
            ) from None
        what = f"a pickled {found.group(1)} object"
        raise CheckpointError(
            f"{path} is not a plain tensor state dict: it holds {what}, and vggjax never unpickles "
            "arbitrary objects; save torch.save(model.state_dict(), PATH) (or a .safetensors file) and convert that"
        ) from None
    except Exception as e:  # noqa: BLE001 - not a torch file at all: zip, EOF, magic-number errors
        raise CheckpointError(
            f"cannot read {path} as a PyTorch state dict: {_first_line(e)}"
        ) from None
    return _plain_state_dict(obj, path)


# ------------------------------------------------------------------ torchvision → vggjax


_CONV_KEY = re.compile(r"^features\.(\d+)\.weight$")


def _guess_torchvision_arch(sd: Mapping[str, np.ndarray]) -> str | None:
    """The ``ARCHS`` name whose layer layout the state dict has (any width), or None."""
    convs = sorted(
        (int(m.group(1)), sd[k].shape)
        for k in sd
        if (m := _CONV_KEY.match(k)) and np.ndim(sd[k]) == 4
    )
    if not convs:
        return None
    bn = f"features.{convs[0][0] + 1}.running_mean" in sd
    step = 3 if bn else 2
    cfg: list[Any] = []
    for (i, shape), nxt in zip(convs, convs[1:] + [(None, None)]):
        cfg.append(int(shape[0]))
        if nxt[0] is not None and nxt[0] - i == step + 1:
            cfg.append("M")
        elif nxt[0] is not None and nxt[0] - i != step:
            return None
    cfg.append("M")
    width = cfg[0] / 64
    for name, (c, b) in ARCHS.items():
        want = [v if v == "M" else scale_width(v, width) for v in CFGS[c]]
        if b == bn and want == cfg:
            return name
    return None


def _arch_hint(found: str | None, arch: str, flag: str = "--arch") -> str:
    if found and found != arch:
        return f"; the file holds {found} weights: use {flag} {found}"
    return ""


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _check_and_set(
    entries: list[_Entry], sd: Mapping[str, np.ndarray], arch: str, origin: str
) -> None:
    """Compare ``sd`` with ``entries`` (first mismatch → CheckpointError) and copy the values in."""
    guess = _guess_torchvision_arch(sd)
    hint = _arch_hint(guess, arch)
    by_kind: dict[tuple, list[str]] = collections.defaultdict(list)

    def kind(key: str, ndim: int) -> tuple:
        return (key.split(".")[0], key.rsplit(".", 1)[-1], ndim)

    for k in sorted(sd, key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")]):
        by_kind[kind(k, np.ndim(sd[k]))].append(k)
    seen: dict[tuple, int] = collections.defaultdict(int)
    for e in entries:
        group = kind(e.key, len(e.shape))
        ordinal = seen[group]
        seen[group] += 1
        if e.key not in sd:
            if e.variable is None:  # num_batches_tracked is bookkeeping, not a weight
                continue
            others = by_kind.get(group, [])
            there = (
                f"; in its place the file has {others[ordinal]} with shape {_shape(np.shape(sd[others[ordinal]]))}"
                if ordinal < len(others)
                else ""
            )
            raise CheckpointError(
                f"{origin} does not fit {arch}: missing key {e.key} (shape {_shape(e.shape)}){there}{hint}"
            )
        have = tuple(np.shape(sd[e.key]))
        if have != tuple(e.shape):
            raise CheckpointError(
                f"{origin} does not fit {arch}: {e.key} has shape {_shape(have)} in the file but "
                f"{_shape(e.shape)} in {arch}{hint}"
            )
    known = {e.key for e in entries}
    extra = [k for k in sd if k not in known]
    if extra:
        k = extra[0]
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{origin} does not fit {arch}: unknown key {k} with shape {_shape(np.shape(sd[k]))}{more}{hint}"
        )
    for e in entries:
        if e.variable is not None:
            value = e.to_jax(np.asarray(sd[e.key]))
            e.variable.set_value(jnp.asarray(value, dtype=e.variable.get_value().dtype))


def _skeleton(factory: Callable[[nnx.Rngs], VGG], seed: int) -> VGG:
    """``factory(rngs)`` (which builds with ``init="zeros"``) without running it: every weight is about to be overwritten.

    Built abstractly (``nnx.eval_shape``), then given placeholder values (lazily allocated
    numpy zeros for weights, real keys for the dropout streams), which is seconds faster
    than initialising 138M parameters only to replace them.
    """
    model = nnx.eval_shape(lambda: factory(nnx.Rngs(seed)))
    base = jax.random.key(seed)
    leaves, treedef = jax.tree_util.tree_flatten(nnx.state(model))
    filled = []
    for i, x in enumerate(leaves):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            filled.append(
                jax.random.split(jax.random.fold_in(base, i), x.shape)
                if x.shape
                else jax.random.fold_in(base, i)
            )
        elif x.size < 1024:
            filled.append(jnp.zeros(x.shape, x.dtype))
        else:
            filled.append(np.zeros(x.shape, x.dtype))
    nnx.update(model, treedef.unflatten(filled))
    return model


def _make(abstract: bool, seed: int, *args: Any, **kwargs: Any) -> VGG:
    """``build(*args, **kwargs)``: as a :func:`_skeleton` when every weight will be loaded, else randomly initialised."""
    if abstract:
        return _skeleton(lambda rngs: build(*args, init="zeros", rngs=rngs, **kwargs), seed)
    return build(*args, rngs=nnx.Rngs(seed), **kwargs)


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise one_of("architecture", arch, ARCHS)


def _source_dict(source: Any) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(source, (str, os.PathLike)):
        return load_torch_state_dict(source), os.fspath(source)
    if hasattr(source, "state_dict") and callable(source.state_dict):
        return _plain_state_dict(
            source.state_dict(), f"the {type(source).__name__} module"
        ), f"the {type(source).__name__} module"
    return _plain_state_dict(source, "the state dict"), "the state dict"


def from_torchvision(
    source: Any,
    arch: str,
    *,
    num_classes: int | None = None,
    dropout: float = 0.5,
    seed: int = 0,
) -> VGG:
    """Build the vggjax ``arch`` holding torchvision weights, in eval mode.

    ``source`` is a torchvision VGG module (``torchvision.models.vgg16()``), its
    ``state_dict()`` (tensors or numpy arrays), or a path to one saved with ``torch.save``
    (``.pth``, read with ``weights_only=True``) or as ``.safetensors``. The width,
    input channels, classifier width, pooled size and class count are read from the
    tensors (so width-reduced and few-class exports work). A state dict without
    ``classifier.*`` keys fills the backbone only; the ``fc`` head (``num_classes``,
    default 1000) then keeps its fresh random initialisation. Raises CheckpointError
    naming the first key that is missing, misshapen or unknown for ``arch``.
    """
    _check_arch(arch)
    sd, origin = _source_dict(source)
    first = sd.get("features.0.weight")
    if first is None or np.ndim(first) != 4:
        raise CheckpointError(
            f"{origin} is not a torchvision VGG state dict: missing key features.0.weight "
            f"(a 4-D conv weight); its first keys are {', '.join(list(sd)[:3]) or 'none'}"
        )
    width = first.shape[0] / 64
    has_head = any(k.startswith("classifier.") for k in sd)
    head_options: dict[str, Any] = {}
    classes = num_classes or 1000
    if has_head:
        fc6, fc8 = sd.get("classifier.0.weight"), sd.get("classifier.6.weight")
        last = scale_width(512, width)
        if fc6 is not None and np.ndim(fc6) == 2:
            head_options["hidden"] = int(fc6.shape[0])
            pool = math.isqrt(max(1, fc6.shape[1] // last))
            if pool * pool * last == fc6.shape[1]:
                head_options["pool_size"] = pool
        if fc8 is not None and np.ndim(fc8) == 2:
            if num_classes is not None and num_classes != fc8.shape[0]:
                raise CheckpointError(
                    f"{origin} has {fc8.shape[0]} classes (classifier.6.weight {_shape(fc8.shape)}), not num_classes={num_classes}; "
                    "convert it as is and fine-tune with the new class count (--config.init_from)"
                )
            classes = int(fc8.shape[0])
    model = _make(
        has_head,
        seed,
        arch,
        num_classes=classes,
        width=width,
        in_channels=int(first.shape[1]),
        head="fc",
        head_options=head_options,
        dropout=dropout,
    )
    _check_and_set(_entries(model, include_head=has_head), sd, arch, origin)
    model.eval()
    model.has_imported_head = has_head
    return model


def to_torchvision(model: VGG, *, as_numpy: bool = False) -> "collections.OrderedDict[str, Any]":
    """The torchvision state dict of ``model`` (``fc`` or ``fc_conv`` head), the exact inverse of :func:`from_torchvision`.

    Keys and shapes are those of ``torchvision.models.<arch>(num_classes=...)``
    (``load_state_dict`` accepts it for full-width models); BatchNorm's
    ``num_batches_tracked`` is 0. Values are ``torch.Tensor`` (float32, contiguous) or,
    with ``as_numpy``, numpy arrays. A ``gap`` head has no torchvision equivalent and
    raises ConfigError.
    """
    if _fc_head(model) is None:
        raise ConfigError(
            "to_torchvision needs an 'fc' or 'fc_conv' head (torchvision's classifier); this model has a 'gap' head"
        )
    out: collections.OrderedDict[str, Any] = collections.OrderedDict()
    for e in _entries(model):
        if e.variable is None:
            out[e.key] = np.array(0, np.int64)
        else:
            out[e.key] = np.array(
                e.to_torch(np.asarray(e.variable.get_value())), order="C"
            )  # writable, contiguous
    if as_numpy:
        return out
    import torch

    return collections.OrderedDict((k, torch.from_numpy(v)) for k, v in out.items())


# ------------------------------------------------------------------------ Keras → vggjax


def _h5_tensors(h5: Any, origin: str) -> list[tuple[str, list[np.ndarray]]]:
    """``[(layer name, [kernel, bias])]`` in model order from a Keras 3 or legacy Keras-2 weights file."""
    if "layers" in h5 and hasattr(h5["layers"], "keys"):
        # Keras 3 (.weights.h5 / model.weights.h5 in a .keras zip): layers/<conv2d_N>/vars/<i>.
        groups = h5["layers"]
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
    root = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" not in root.attrs:
        raise CheckpointError(
            f"{origin} is not a Keras weights file (no 'layers' group and no 'layer_names' attribute)"
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


def _keras_tensors(source: Any) -> tuple[list[tuple[str, list[np.ndarray]]], str]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
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
                    return _h5_tensors(h5, path), path
            with h5py.File(path, "r") as h5:
                return _h5_tensors(h5, path), path
        except VggjaxError:
            raise
        except Exception as e:  # noqa: BLE001 - h5py raises OSError/KeyError on foreign files
            raise CheckpointError(
                f"cannot read {path} as a Keras weights file: {_first_line(e)}"
            ) from None
    layers = getattr(source, "layers", None)
    if layers is None:
        raise CheckpointError(
            f"expected a Keras model or a Keras weights file, got a {type(source).__name__}"
        )
    out = [(layer.name, [np.asarray(w) for w in layer.get_weights()]) for layer in layers]
    return [(n, w) for n, w in out if w], f"the Keras model {getattr(source, 'name', '')!r}"


def from_keras(
    source: Any,
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    dropout: float = 0.5,
    seed: int = 0,
) -> VGG:
    """Build vggjax VGG-16/19 holding ``keras.applications.VGG16``/``VGG19`` weights, in eval mode.

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
    convs = [(n, w) for n, w in layers if len(w) == 2 and np.ndim(w[0]) == 4]
    dense = [(n, w) for n, w in layers if len(w) == 2 and np.ndim(w[0]) == 2]
    other = [n for n, w in layers if not (len(w) == 2 and np.ndim(w[0]) in (2, 4))]
    if other:
        raise CheckpointError(
            f"{origin} has a layer {other[0]!r} that VGG does not have (only conv and dense layers)"
        )
    guess = _KERAS_ARCHS.get(len(convs))
    arch = arch or guess
    if arch is None:
        raise CheckpointError(
            f"{origin} has {len(convs)} conv layers; Keras VGG16 has 13 and VGG19 16"
        )
    _check_arch(arch)
    if ARCHS[arch][1]:
        raise ConfigError(f"Keras has no BatchNorm VGG; use --arch vgg16 or vgg19, not {arch}")
    if len(dense) not in (0, 3):
        raise CheckpointError(
            f"{origin} has {len(dense)} dense layers; a VGG top has 3 (fc1, fc2, predictions), a headless model 0"
        )
    has_head = bool(dense)
    head_options: dict[str, Any] = {}
    classes = num_classes or 1000
    if has_head:
        last = convs[-1][1][0].shape[-1] if convs else 512
        fc1 = dense[0][1][0]
        pool = math.isqrt(max(1, fc1.shape[0] // last))
        head_options = {
            "hidden": int(fc1.shape[1]),
            "pool_size": pool if pool * pool * last == fc1.shape[0] else 7,
        }
        classes = int(dense[2][1][0].shape[1])
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
    names = [name for kind, name in model.features.plan if kind == "conv"]
    targets = [getattr(model.features, name) for name in names]
    if has_head:
        names += ["fc6", "fc7", "fc8"]
        targets += [model.head.fc6, model.head.fc7, model.head.fc8]
    hint = _arch_hint(guess, arch)
    n_conv = len(targets) - len(dense)
    # Shapes first (in model order): the first differing layer names both shapes.
    for name, layer, (kname, (kernel, bias)) in zip(names, targets, convs[:n_conv] + dense):
        for what, have, need in (
            ("kernel", kernel.shape, tuple(layer.kernel.get_value().shape)),
            ("bias", bias.shape, tuple(layer.bias.get_value().shape)),
        ):
            if tuple(have) != need:
                raise CheckpointError(
                    f"{origin} does not fit {arch}: {kname} {what} has shape {_shape(have)} in the file but "
                    f"{arch}'s {name} needs {_shape(need)}{hint}"
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
            f"{origin} does not fit {arch}: unknown layer {kname} with kernel {_shape(kernel.shape)}{hint}"
        )
    for layer, (_, (kernel, bias)) in zip(targets, convs + dense):
        layer.kernel.set_value(jnp.asarray(kernel, layer.kernel.get_value().dtype))
        layer.bias.set_value(jnp.asarray(bias, layer.bias.get_value().dtype))
    model.eval()
    model.has_imported_head = has_head
    return model


# ---------------------------------------------------------------------------- fc → conv


def _rebuild_options(model: VGG) -> dict[str, Any]:
    """Constructor options that rebuild ``model``'s architecture (explicit cfg, BN settings, dtypes)."""
    cfg: list[Any] = []
    bn = None
    for kind, name in model.features.plan:
        layer = getattr(model.features, name, None)
        if kind == "conv":
            cfg.append(int(layer.kernel.get_value().shape[-1]))
            conv = layer
        elif kind == "pool":
            cfg.append("M")
        elif kind == "bn":
            bn = layer
    head = model.head
    drop = getattr(head, "drop6", None)
    opts: dict[str, Any] = dict(
        cfg=cfg,
        num_classes=model.num_classes,
        batch_norm=bn is not None,
        in_channels=model.in_channels,
        dropout=drop.rate if drop is not None else 0.0,
        dtype=conv.dtype,
        param_dtype=conv.param_dtype,
        name=model.name,
    )
    if bn is not None:
        opts.update(norm_momentum=bn.momentum, norm_eps=bn.epsilon)
    return opts


def to_fc_conv(model: VGG, *, return_map: bool = False, seed: int = 0) -> VGG:
    """The same network with its ``fc`` head as convolutions (``fc_conv``): fc6 a k×k VALID conv, fc7/fc8 1×1.

    The backbone and BatchNorm statistics are copied and the head is ported by
    :meth:`ConvHead.load_fc`, so logits are equal at the size where the fc head's pooled map
    is k×k (224 for ImageNet weights) and larger inputs give a score map (averaged into
    logits, or returned as ``(N, h, w, classes)`` with ``return_map``). Eval mode.
    """
    if not isinstance(model.head, FCHead):
        raise ConfigError(
            f"to_fc_conv needs a model with an 'fc' head, got a {type(model.head).__name__}"
        )
    opts = _rebuild_options(model)
    cfg = opts.pop("cfg")
    head = model.head
    dense = _skeleton(
        lambda rngs: VGG(
            cfg,
            head="fc_conv",
            head_options={
                "hidden": int(head.fc7.kernel.get_value().shape[0]),
                "kernel_size": head.pool_size,
                "return_map": return_map,
            },
            init="zeros",
            rngs=rngs,
            **opts,
        ),
        seed,
    )
    nnx.update(dense.features, nnx.state(model.features))
    dense.head.load_fc(head)
    dense.eval()
    dense.has_imported_head = getattr(model, "has_imported_head", True)
    return dense


# ---------------------------------------------------------------------- checkpoints


def _weights_tree(model: VGG, include_head: bool) -> dict[str, Any]:
    params = nnx.state(model, nnx.Param)
    frozen = nnx.state(model, Frozen)
    stats = nnx.state(model, nnx.BatchStat)
    tree: dict[str, Any] = {}
    for key, state in (("params", params), ("frozen", frozen), ("batch_stats", stats)):
        if not include_head and "head" in state:
            del state["head"]
        if jax.tree.leaves(state):
            tree[key] = state
    return tree


def save(
    model: VGG,
    directory: str | os.PathLike,
    *,
    meta: Mapping[str, Any] | None = None,
    include_head: bool | None = None,
) -> str:
    """Write ``model``'s weights as a vggjax checkpoint in ``directory`` (returns its absolute path).

    Layout: ``directory/checkpoints/0/`` with the trainer's state names (``params``,
    ``batch_stats``), so ``python -m vggjax.train --config.init_from=DIRECTORY`` starts from
    it (layers whose shape changed, e.g. a new class count, keep their fresh init) and
    :func:`load` rebuilds the model. ``include_head`` (default: whether the weights came
    with a head) leaves the head out for headless imports. ``meta`` adds JSON fields to
    the stored description (arch, head, options, source). Refuses a non-empty directory.
    """
    from vggjax.checkpoint import Checkpointer

    directory = os.path.abspath(os.fspath(directory))
    if os.path.isdir(directory) and os.listdir(directory):
        raise CheckpointError(
            f"--output {directory} exists and is not empty; choose a new directory"
        )
    if include_head is None:
        include_head = getattr(model, "has_imported_head", True)
    opts = _rebuild_options(model)
    head = model.head
    head_options: dict[str, Any] = {}
    if isinstance(head, FCHead):
        head_options = {
            "hidden": int(head.fc7.kernel.get_value().shape[0]),
            "pool_size": head.pool_size,
        }
    elif isinstance(head, ConvHead):
        head_options = {
            "hidden": int(head.fc7.kernel.get_value().shape[-1]),
            "kernel_size": head.kernel_size,
        }
    info = {
        "format": FORMAT,
        "arch": model.name if model.name in ARCHS else None,
        "cfg": opts["cfg"],
        "batch_norm": opts["batch_norm"],
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "head": model.head_name,
        "head_options": head_options,
        "width": (opts["cfg"][0] / 64) if opts["cfg"] else 1.0,
        "has_head": bool(include_head),
        "parameters": int(
            sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Any(nnx.Param, Frozen))))
        ),
        **dict(meta or {}),
    }
    with Checkpointer(
        os.path.join(directory, "checkpoints"), max_to_keep=None, async_save=False
    ) as ckpt:
        ckpt.save(0, _weights_tree(model, include_head), info, force=True)
        ckpt.wait()
    return directory


def load(directory: str | os.PathLike, *, seed: int = 0) -> VGG:
    """Rebuild the model that :func:`save` (or ``python -m vggjax.convert``) wrote to ``directory``, in eval mode.

    The architecture comes from the stored description; the weights are read with
    :func:`vggjax.checkpoint.restore_params_from`. A headless conversion gets a freshly
    initialised ``fc`` head. Raises CheckpointError when ``directory`` holds no conversion.
    """
    from vggjax.checkpoint import Checkpointer, restore_params_from

    root = os.path.join(os.path.abspath(os.fspath(directory)), "checkpoints")
    if not os.path.isdir(root):
        raise CheckpointError(
            f"{directory} holds no vggjax.convert output (no checkpoints/ directory)"
        )
    with Checkpointer(root, read_only=True) as ckpt:
        info = ckpt.read_meta()
    if info.get("format") != FORMAT:
        raise CheckpointError(
            f"{directory} is not a vggjax.convert output (meta format {info.get('format')!r}); build the model and use restore_params_from"
        )

    def factory(rngs: nnx.Rngs, init: str = "zeros") -> VGG:
        return VGG(
            info["cfg"],
            num_classes=int(info["num_classes"]),
            batch_norm=bool(info["batch_norm"]),
            head=info["head"],
            head_options=info["head_options"],
            in_channels=int(info["in_channels"]),
            init=init,
            rngs=rngs,
            name=info.get("arch") or "VGG",
        )

    model = _skeleton(factory, seed) if info["has_head"] else factory(nnx.Rngs(seed), "torchvision")
    target = {"params": nnx.state(model, nnx.Param), "batch_stats": nnx.state(model, nnx.BatchStat)}
    tree, _ = restore_params_from(directory, target)
    nnx.update(model, tree["params"], tree["batch_stats"])
    model.eval()
    model.has_imported_head = bool(info["has_head"])
    return model


# ---------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vggjax.convert",
        description="Convert torchvision or Keras VGG weights into a vggjax checkpoint that "
        "`python -m vggjax.train --config.init_from=OUTPUT` fine-tunes from.",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("torchvision", "keras"),
        help="the framework that wrote --input",
    )
    p.add_argument(
        "--arch", required=True, choices=sorted(ARCHS), help="VGG architecture of the weights"
    )
    p.add_argument(
        "--input",
        required=True,
        help="torchvision: .pth/.pt state dict or .safetensors; keras: .weights.h5, .keras or legacy .h5",
    )
    p.add_argument("--output", required=True, help="new directory for the vggjax checkpoint")
    p.add_argument(
        "--head",
        choices=("fc", "fc_conv"),
        default="fc",
        help="fc_conv: port fc6-fc8 to 7x7 and 1x1 convs (dense evaluation)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter CLI on ``argv`` (default ``sys.argv[1:]``); returns 0, or exits with status 2 on a user error.

    Errors (a missing or foreign file, a pickle that is not a tensor state dict, weights of
    another architecture) are printed as one ``error: ...`` line without a traceback.
    """
    args = _parser().parse_args(argv)
    try:
        if args.source == "torchvision":
            model = from_torchvision(args.input, args.arch)
        else:
            model = from_keras(args.input, args.arch)
        has_head = model.has_imported_head
        if args.head == "fc_conv":
            if not has_head:
                raise ConfigError(
                    f"{args.input} has no classifier to port: --head fc_conv needs weights with the top (fc) layers"
                )
            model = to_fc_conv(model)
        out = save(
            model,
            args.output,
            meta={
                "source": args.source,
                "input": os.path.abspath(args.input),
                "preprocessing": PREPROCESSING[args.source],
            },
        )
    except VggjaxError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2)
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    what = f"{model.num_classes} classes" if has_head else "backbone only (no top layers)"
    print(
        f"converted {args.arch} from {args.source} ({n:,} parameters, {what}, head {args.head}) -> {out}"
    )
    mode = PREPROCESSING[args.source]
    print(
        f"inputs: vggjax.features.normalize(images, {mode!r}) ("
        + (
            "RGB in [0, 1], ImageNet mean/std)"
            if mode == "torch"
            else "RGB in [0, 1] -> BGR 0..255 minus the ImageNet mean)"
        )
    )
    print(
        f"fine-tune: python -m vggjax.train --config=vggjax/configs/finetune.py --config.model={args.arch} --config.init_from={out}"
    )
    return 0


if __name__ == "__main__":
    main()
