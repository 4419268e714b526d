"""Reading PyTorch state dicts from ``.pth``/``.pt`` and ``.safetensors`` files, safely.

``.pth`` files go through ``torch.load(weights_only=True)``, which rebuilds only tensors
and plain containers: a file that pickles anything else is refused with a one-line
:class:`~vggjax.errors.CheckpointError`, never unpickled.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from vggjax.convert.common import _first_line
from vggjax.errors import CheckpointError


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
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and DataParallel's ``module.``;
    tensors → numpy."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{origin} holds a {type(obj).__name__}, not a state dict "
            "(a mapping of names to tensors); "
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
    """Read a PyTorch state dict from a ``.pth``/``.pt`` file or a ``.safetensors`` file,
    safely.

    ``.pth`` files are loaded with ``torch.load(weights_only=True)``, which only rebuilds
    tensors and plain containers: a file that pickles anything else (a whole
    ``nn.Module``, custom classes) is refused with a CheckpointError and never executed.
    Returns ``{key: numpy array}`` in the file's order (bfloat16 becomes float32).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--input {path}: no such file")
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    return _plain_state_dict(_torch_load(path), path)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
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


def _torch_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with its errors as one-line CheckpointErrors."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs PyTorch (pip install 'vggjax[torch]'), "
            "or convert it to .safetensors"
        ) from None
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(path, e) from None
    except Exception as e:  # noqa: BLE001 - not a torch file at all: zip, EOF, magic-number errors
        raise CheckpointError(
            f"cannot read {path} as a PyTorch state dict: {_first_line(e)}"
        ) from None


def _unpickling_error(path: str, e: Exception) -> CheckpointError:
    """Why ``weights_only`` refused ``path``: a foreign object in the pickle, or no pickle."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if not found:  # not a pickle of allowed types: a damaged or foreign file
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text)
        reason = detail.group(1) if detail else _first_line(e)
        return CheckpointError(
            f"cannot read {path} as a PyTorch state dict ({reason}); is it a torch.save file?"
        )
    what = f"a pickled {found.group(1)} object"
    return CheckpointError(
        f"{path} is not a plain tensor state dict: it holds {what}, and vggjax never unpickles "
        "arbitrary objects; save torch.save(model.state_dict(), PATH) (or a .safetensors file) "
        "and convert that"
    )
