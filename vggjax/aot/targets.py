"""Compile targets by the names users know — ``v5e-8``, ``v4-32``, ``v5p-128``, ``v6e-256``,
``h100x8``, ``2xh100x8`` — and their compile-only devices on this (CPU) host.

A TPU slice becomes a libtpu topology the way MaxText's ``accelerator_to_spec_map.py`` names it
(v5e/v6e-N: N chips; v4/v5p-N: N TensorCores, N/2 megacore chips, libtpu prefix ``v4:``/``v5:``),
every chip of a multi-host slice included. A GPU target is ``[HOSTS x]KIND x GPUS`` with XLA's
own device description of that GPU (``gpu_specs/*.txtpb``, from openxla/xla). Memory per device:
what XLA:TPU reports as available HBM when a compile runs out of it (measured with libtpu
0.0.42); for a GPU the spec's memory times JAX's default allocator fraction, 0.75
(``XLA_PYTHON_CLIENT_MEM_FRACTION`` overrides it). HBM bandwidths are the vendors' data-sheet
numbers (a GPU's comes from its spec file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import sys
import tempfile
from typing import Any, Iterator

from vggjax.aot.errors import AotError, CompilerMissing

GIB = 2**30
SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_specs")
TPU_PIP = 'pip install -e ".[tpu-aot]"  (libtpu==0.0.42.*, the libtpu jax[tpu]==0.10.2 pins)'
GPU_PIP = (
    'pip install -e ".[gpu-aot]"  (jax-cuda12-plugin[with-cuda]==0.10.2, nvidia-cuda-nvcc-cu12)'
)


@dataclasses.dataclass(frozen=True)
class _Tpu:
    prefix: str  # libtpu's topology prefix
    chip_config: str
    device_kind: str
    hbm_bytes: float  # per chip, nominal
    available_bytes: float  # what XLA:TPU says a program may use
    hbm_bytes_per_s: float
    megacore: bool  # the name counts TensorCores, two per chip


# HBM and bandwidth per chip (Google Cloud's system-architecture pages); "available" is what
# libtpu 0.0.42's compiler reports in its out-of-memory error for each generation.
TPUS = {
    "v4": _Tpu("v4", "megacore", "TPU v4", 32 * GIB, 30.75 * GIB, 1.2e12, True),
    "v5e": _Tpu("v5e", "default", "TPU v5 lite", 16 * GIB, 15.75 * GIB, 0.819e12, False),
    "v5p": _Tpu("v5", "megacore", "TPU v5", 95.74 * GIB, 95.74 * GIB, 2.765e12, True),
    "v6e": _Tpu("v6e", "default", "TPU v6 lite", 32 * GIB, 31.25 * GIB, 1.64e12, False),
}
_V5E_SHAPES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16"}
_V5E_SHAPES[256] = "16x16"
# v4/v5p-N (N TensorCores, N/2 chips) -> 3-D slice shape: MaxText's table, which lists more
# irregular v5p sizes than v4 ones.
_V4_SHAPES = "8:2x2x1 16:2x2x2 32:2x2x4 64:2x4x4 128:4x4x4 256:4x4x8 384:4x4x12 512:4x8x8 "
_V4_SHAPES += "1024:8x8x8 1536:8x8x12 2048:8x8x16 4096:8x16x16"
_V5P_EXTRA = (
    "640:4x4x20 768:4x8x12 896:4x4x28 1152:4x12x12 1280:4x8x20 1408:4x4x44 1664:4x4x52 "
    "1792:4x8x28 1920:4x12x20 2176:4x4x68 2304:8x12x12 2432:4x4x76 2560:8x8x20 2688:4x12x28 "
    "2816:4x8x44 2944:4x4x92 3072:8x12x16 3200:4x20x20 3328:4x8x52 3456:12x12x12 3584:8x8x28 "
    "3712:4x4x116 3840:8x12x20 3968:4x4x124 4224:4x12x44 4352:4x8x68 4480:4x20x28 "
    "4608:12x12x16 4736:4x4x148 4864:4x8x76 4992:4x12x52 5120:8x16x20 5248:4x4x164 "
    "5376:8x12x28 5504:4x4x172 5632:8x8x44 5760:12x12x20 5888:4x8x92 6016:4x4x188 "
    "6144:12x16x16 6272:4x28x28 6400:8x20x20 6528:4x12x68 6656:8x8x52 6784:4x4x212 "
    "6912:12x12x24 7040:4x20x44 7168:8x16x28 7296:4x12x76 7424:4x8x116 7552:4x4x236 "
    "7680:12x16x20 7808:4x4x244 7936:4x8x124 8064:12x12x28 8192:16x16x16 8320:4x20x52 "
    "8448:8x12x44 8704:8x8x68 8832:4x12x92 8960:8x20x28 9216:12x16x24 9472:4x8x148 "
    "9600:12x20x20 9728:8x8x76 9856:4x28x44 9984:8x12x52 10240:16x16x20 10368:12x12x36 "
    "10496:4x8x164 10752:12x16x28 10880:4x20x68 11008:4x8x172 11136:4x12x116 11264:8x16x44 "
    "11520:12x20x24 11648:4x28x52 11776:8x8x92 11904:4x12x124 12032:4x8x188 12160:4x20x76 "
    "12288:16x16x24 13824:12x24x24 17920:16x20x28"
)


def _shapes(text: str) -> dict[int, str]:
    return {int(k): v for k, v in (item.split(":") for item in text.split())}


_MEGACORE_SHAPES = {
    "v4": _shapes(_V4_SHAPES),
    "v5p": {**_shapes(_V4_SHAPES), **_shapes(_V5P_EXTRA)},
}
# GPU kind -> spec file (device memory and bandwidth are read from it).
GPUS = {
    "h100": "h100_sxm",
    "h200": "h200",
    "a100-80": "a100_sxm_80",
    "a100-40": "a100_sxm_40",
    "b200": "b200",
}
# Dense peaks for kinds vggjax.bench.accelerator.PEAK_TFLOPS does not list (NVIDIA's B200 sheet).
EXTRA_PEAKS = {"B200": {"bfloat16": 2250.0, "float32": 1100.0}}


@dataclasses.dataclass(frozen=True)
class Target:
    """One compile target: ``devices`` compile-only devices on ``hosts`` hosts.

    ``memory_bytes`` is a device's memory, ``available_bytes`` what a program may use of it
    (the fits verdict compares with this), ``hbm_bytes_per_s`` its memory bandwidth;
    ``topology`` the libtpu topology keyword arguments or the GPU ``target_config`` file.
    """

    name: str
    platform: str  # "tpu" or "cuda"
    kind: str  # "v5e", "h100", ...
    device_kind: str
    devices: int
    hosts: int
    memory_bytes: float
    available_bytes: float
    hbm_bytes_per_s: float
    topology: dict[str, Any]
    memory_note: str

    @property
    def devices_per_host(self) -> int:
        return self.devices // self.hosts

    def peak_tflops(self, dtype: str) -> float | None:
        """Dense peak TFLOP/s of one device for ``dtype`` compute (``"bfloat16"``/``"float32"``)."""
        from vggjax.bench.accelerator import peak_tflops

        for key, peaks in EXTRA_PEAKS.items():
            if key.lower() in self.device_kind.lower():
                return peaks[dtype]
        return peak_tflops(self.device_kind, dtype)


def valid_names() -> list[str]:
    """Example target names, for the unknown-target message."""
    names = [f"{k}-{n}" for k in ("v5e", "v6e") for n in _V5E_SHAPES]
    names += [f"v4-{n}" for n in _MEGACORE_SHAPES["v4"]]
    names += [f"v5p-{n}" for n in sorted(_MEGACORE_SHAPES["v5p"])[:8]] + ["v5p-… (to 17920)"]
    names += [f"{g}x8" for g in GPUS] + ["HOSTSxGPUxCOUNT (e.g. 2xh100x8)"]
    return names


def _unknown(name: str) -> AotError:
    return AotError(f"unknown target {name!r}; valid: {', '.join(valid_names())}")


def _tpu_target(name: str, kind: str, count: int) -> Target:
    tpu = TPUS[kind]
    shapes = _MEGACORE_SHAPES[kind] if tpu.megacore else _V5E_SHAPES
    if count not in shapes:
        raise _unknown(name)
    shape = shapes[count]
    chips = count // 2 if tpu.megacore else count
    dims = [int(d) for d in shape.split("x")]
    if tpu.megacore:
        wrap = (True, True, True) if chips >= 64 else (False, False, False)
        per_host = (2, 2, 1)
    else:
        wrap = {128: (False, True, False), 256: (True, True, False)}.get(chips, (False,) * 3)
        # One host holds 8 chips in v5e-8 / v6e-8 (ct5lp-hightpu-8t, ct6e-standard-8t);
        # MaxText says (2, 2, 1), which compiles the same program but counts two hosts.
        per_host = {1: (1, 1, 1), 8: (2, 4, 1)}.get(chips, (2, 2, 1))
    hosts = 1
    for d, h in zip(dims + [1] * (3 - len(dims)), per_host):
        hosts *= max(1, d // h)
    return Target(
        name=name,
        platform="tpu",
        kind=kind,
        device_kind=tpu.device_kind,
        devices=chips,
        hosts=hosts,
        memory_bytes=tpu.hbm_bytes,
        available_bytes=tpu.available_bytes,
        hbm_bytes_per_s=tpu.hbm_bytes_per_s,
        topology=dict(
            topology_name=f"{tpu.prefix}:{shape}",
            chip_config_name=tpu.chip_config,
            chips_per_host_bounds=per_host,
            num_slices=1,
            wrap=wrap,
        ),
        memory_note="available HBM as XLA:TPU reports it",
    )


def spec_field(text: str, field: str) -> str | None:
    """The first ``field: value`` of a text-format proto, as text (quotes stripped)."""
    m = re.search(rf"^\s*{field}:\s*\"?([^\"\n]+)\"?\s*$", text, re.M)
    return m.group(1) if m else None


def _gpu_target(name: str, kind: str, hosts: int, gpus: int) -> Target:
    path = os.path.join(SPEC_DIR, GPUS[kind] + ".txtpb")
    with open(path) as f:
        spec = f.read()
    memory = float(spec_field(spec, "device_memory_size") or 0)
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
    return Target(
        name=name,
        platform="cuda",
        kind=kind,
        device_kind=spec_field(spec, "device_description_str") or kind,
        devices=hosts * gpus,
        hosts=hosts,
        memory_bytes=memory,
        available_bytes=memory * fraction,
        hbm_bytes_per_s=float(spec_field(spec, "memory_bandwidth") or 0),
        topology=dict(topology=f"1x{hosts}x{gpus}", target_config=spec, spec_file=path),
        memory_note=f"JAX's GPU allocator pool: {fraction:g} of the memory "
        "(XLA_PYTHON_CLIENT_MEM_FRACTION)",
    )


def resolve(name: str) -> Target:
    """The :class:`Target` called ``name``; :class:`AotError` listing the valid names if none."""
    key = name.strip().lower()
    m = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", key)
    if m:
        return _tpu_target(key, m.group(1), int(m.group(2)))
    m = re.fullmatch(r"(?:(\d+)x)?([a-z0-9-]+?)x(\d+)", key)
    if m and m.group(2) in GPUS:
        hosts, gpus = int(m.group(1) or 1), int(m.group(3))
        if hosts >= 1 and 1 <= gpus <= 8:
            return _gpu_target(key, m.group(2), hosts, gpus)
    raise _unknown(name)


# libtpu prints these when it finds no TPU on the host (no metadata server, no worker list):
# true and harmless for a compile-only topology.
_LIBTPU_NOISE = re.compile(
    r"could not determine TPU|Logging before InitGoogle|unexpected worker hostname|"
    r"Source Location Trace|libtpu_init_utils|Failed to find host bounds|^\s*$"
)


@contextlib.contextmanager
def _quiet_stderr(noise: re.Pattern) -> Iterator[None]:
    """Send file descriptor 2 (C++ logging) to a file while the block runs, then pass on the
    lines that do not match ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            # libtpu glues its first warning to the next without a newline
            text = tmp.read().decode(errors="replace").replace("WARNING: ", "\nWARNING: ")
            kept = [line for line in text.splitlines() if not noise.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (a compiler's Python package)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _require(target: Target) -> None:
    if target.platform == "tpu":
        if not installed("libtpu"):
            raise CompilerMissing(
                f"compiling for {target.name} needs the TPU compiler, libtpu, which is not "
                f"installed; {TPU_PIP}"
            )
        return
    if not installed("jax_plugins.xla_cuda12"):
        raise CompilerMissing(
            f"compiling for {target.name} needs the CUDA compiler plugin, which is not "
            f"installed; {GPU_PIP}"
        )
    if not installed("nvidia.cuda_nvcc") and not _which("ptxas"):
        raise CompilerMissing(
            f"compiling for {target.name} needs ptxas (CUDA's assembler), which is not "
            f"installed; {GPU_PIP}"
        )


def _which(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def compile_devices(target: Target) -> list[Any]:
    """The target's compile-only JAX devices (one per chip or GPU, every host's)."""
    from jax.experimental import topologies

    _require(target)
    if target.platform == "tpu":
        # libtpu takes /tmp/libtpu_lockfile so that one process owns a real TPU; compiling for a
        # topology owns none, and two compiling processes (pytest-xdist's workers, a second
        # shell) must not fail with "Internal error when accessing libtpu multi-process lockfile".
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        with _quiet_stderr(_LIBTPU_NOISE):
            topology = topologies.get_topology_desc(platform="tpu", **target.topology)
    else:
        try:
            topology = topologies.get_topology_desc(
                platform="cuda",
                topology=target.topology["topology"],
                target_config=target.topology["target_config"],
            )
        except NotImplementedError as e:  # the plugin did not register (a failed CUDA check)
            raise CompilerMissing(
                f"the CUDA compiler plugin is installed but did not load ({e}); run with "
                f"JAX_PLATFORMS=cpu set before JAX starts (python -m vggjax.aot does), or {GPU_PIP}"
            ) from None
    devices = list(topology.devices)
    if len(devices) != target.devices:
        raise AotError(
            f"{target.name}: the compiler made {len(devices)} devices, expected {target.devices}"
        )
    return devices
