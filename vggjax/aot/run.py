"""One AOT run as a library call: :func:`compile_target` builds the record :mod:`vggjax.aot`
documents; :func:`check_fits` raises :class:`~vggjax.aot.errors.DoesNotFit` from it."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

from vggjax.aot import search, steps, targets
from vggjax.aot.compile import (
    OutOfMemory,
    compile_step,
    does_not_fit_message,
    expected_arguments,
    require_compiled,
)
from vggjax.aot.errors import DoesNotFit


def _versions(platform: str) -> dict[str, str | None]:
    names = ("jax", "jaxlib", "libtpu" if platform == "tpu" else "jax-cuda12-plugin")
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _target_record(target: targets.Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "platform": target.platform,
        "device_kind": target.device_kind,
        "devices": target.devices,
        "hosts": target.hosts,
        "devices_per_host": target.devices_per_host,
        "topology": {k: v for k, v in target.topology.items() if k != "target_config"},
        "memory_bytes": int(target.memory_bytes),
        "available_bytes": int(target.available_bytes),
        "memory_note": target.memory_note,
        "hbm_bytes_per_s": target.hbm_bytes_per_s,
    }


def _config_record(config, sizes: steps.DatasetSizes) -> dict[str, Any]:
    return {
        "model": config.model,
        "dataset": config.dataset,
        "sizes_from": sizes.source,
        "num_classes": sizes.num_classes,
        "channels": sizes.channels,
        "image_size": sizes.image_size,
        "train_examples": sizes.num_train_examples,
        "batch_size": config.batch_size,
        "eval_batch_size": config.get("eval_batch_size", 0) or config.batch_size,
        "dtype": config.get("dtype", "float32"),
        "parallel": config.parallel,
        "compute": config.get("compute", "auto"),
    }


def _oom_entry(fn, args, target, batch: int, parallel: str, e: OutOfMemory) -> dict[str, Any]:
    """A step record for a compile XLA refused for lack of memory (needed bytes if it said)."""
    n = target.devices
    return {
        "batch": batch,
        "per_device_batch": batch // n,
        "devices": n,
        "memory": {
            "total_bytes": e.needed,
            "available_bytes": int(target.available_bytes),
            "headroom_bytes": None if e.needed is None else int(target.available_bytes - e.needed),
            "fits": False,
            "error": str(e),
        },
        "expected_argument_bytes": expected_arguments(args, n, parallel),
        "flops_per_image": None,
        "compile_s": None,
    }


def _notes(target: targets.Target) -> list[str]:
    notes = [
        "roofline: an estimate, a lower bound on step time (FLOPs / dense peak, bytes / HBM "
        "bandwidth, whichever is larger); real steps are slower"
    ]
    if target.platform == "cuda":
        notes.append(
            "GPU: compiled without a GPU, so without autotuning; cuDNN's workspace and the "
            "autotuned kernels' scratch are chosen on the device: temp is a lower bound; "
            "XLA:GPU reports no code size"
        )
    if target.hosts > 1:
        notes.append(
            f"compiled over all {target.devices} devices of the {target.hosts}-host slice; "
            "every number is per device"
        )
    return notes


def _compile_one(config, sizes, target, devices, which: str, batch: int) -> dict[str, Any]:
    """The record of step ``which`` of ``config``, of global ``batch`` (out-of-memory kept)."""
    fn, args = steps.steps(config, sizes, target, devices, which=(which,))[which]
    dtype = config.get("dtype", "float32")
    try:
        return require_compiled(
            lambda: compile_step(
                fn, args, target, batch=batch, dtype=dtype, parallel=config.parallel
            ),
            f"{which} step for {target.name}",
        )
    except OutOfMemory as e:
        return _oom_entry(fn, args, target, batch, config.parallel, e)


def compile_target(
    config,
    target_name: str | targets.Target,
    *,
    which: tuple[str, ...] = ("train", "eval"),
    max_batch: bool = False,
    max_compiles: int = 8,
) -> dict[str, Any]:
    """Compile ``config``'s steps for the target called ``target_name`` (or that
    :class:`~vggjax.aot.targets.Target`) and return the record (keys in :mod:`vggjax.aot`).

    A train step that does not fit triggers the batch search; ``record["error"]`` then says so
    in one line (:func:`check_fits` raises it).
    """
    t0 = time.perf_counter()
    target = (
        target_name if isinstance(target_name, targets.Target) else targets.resolve(target_name)
    )
    sizes = steps.dataset_sizes(config)
    steps.plan(config, sizes, target)  # the config's and batch's errors before any compile
    devices = targets.compile_devices(target)
    record: dict[str, Any] = {
        "target": _target_record(target),
        "config": _config_record(config, sizes),
        "versions": _versions(target.platform),
        "steps": {},
        "notes": _notes(target),
    }
    eval_batch = record["config"]["eval_batch_size"]
    for name in which:
        batch = config.batch_size if name == "train" else eval_batch
        record["steps"][name] = _compile_one(config, sizes, target, devices, name, batch)
    train = record["steps"].get("train")
    if train is not None and (max_batch or not train["memory"]["fits"]):
        record["max_batch"] = search.max_batch(
            lambda b: steps.steps(_with_batch(config, b), sizes, target, devices, ("train",))[
                "train"
            ],
            target,
            train,
            dtype=config.get("dtype", "float32"),
            parallel=config.parallel,
            max_compiles=max_compiles,
        )
    record["fits"] = all(s["memory"]["fits"] for s in record["steps"].values())
    if train is not None and not train["memory"]["fits"]:
        needed = train["memory"]["total_bytes"]
        found = record.get("max_batch")
        record["error"] = does_not_fit_message(target, train["batch"], needed, found)
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    return record


def _with_batch(config, batch: int):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.batch_size = batch
        config.eval_batch_size = batch
    return config


def check_fits(record: dict[str, Any]) -> None:
    """Raise :class:`DoesNotFit` if ``record``'s train step does not fit its target."""
    if record.get("error"):
        train = record["steps"]["train"]["memory"]
        largest = record.get("max_batch", {}).get("global_batch")
        raise DoesNotFit(record["error"], train["total_bytes"], train["available_bytes"], largest)
