"""Devices, meshes and shardings for data parallelism; multi-host start-up; the pmap mode.

The default is the current JAX recommendation: one global ``jax.Array`` batch sharded
over a 1-D device mesh (``jax.make_mesh((n,), ("data",))`` + ``NamedSharding(P("data"))``),
the train state replicated (``P()``), and a plain ``jax.jit`` step — XLA inserts the
gradient all-reduce and computes BatchNorm statistics over the global batch. The
``pmap`` mode runs the same step per device with explicit ``lax.pmean`` over the
``"data"`` axis (and BatchNorm layers told that axis name), for users who want it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vggjax.errors import ConfigError

AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str | None = None,
) -> None:
    """Join the other hosts with ``jax.distributed.initialize`` when that is called for.

    On Cloud TPU VMs (and SLURM/Open MPI clusters) JAX finds everything itself, so call
    with no arguments. Elsewhere pass the coordinator ``host:port``, the number of
    processes and this process's id. ``cpu_collectives="gloo"`` lets CPU-only processes
    all-reduce (used by the multi-process tests). A single process with no coordinator
    and no cluster environment does nothing.
    """
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    on_cluster = any(
        k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")
    )
    if coordinator_address is None and not on_cluster:
        return
    kwargs: dict[str, Any] = {}
    if coordinator_address is not None:
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    jax.distributed.initialize(**kwargs)


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over all (or the first ``num_devices``) devices of all processes."""
    devices = jax.devices()
    n = len(devices) if num_devices in (None, 0) else num_devices
    if n > len(devices):
        raise ConfigError(f"asked for {n} devices but only {len(devices)} are visible")
    # Auto axes: the step is ordinary jit code and XLA propagates shardings itself
    # (jax.make_mesh's default became Explicit axes, which would type every array).
    auto = (jax.sharding.AxisType.Auto,)
    return jax.sharding.Mesh(np.asarray(devices[:n]), (AXIS,), axis_types=auto)


def check_batch(global_batch: int, num_devices: int, what: str = "batch_size") -> None:
    """Raise ConfigError unless ``global_batch`` splits evenly over ``num_devices`` devices."""
    if global_batch % num_devices:
        lo = global_batch - global_batch % num_devices
        raise ConfigError(
            f"{what}={global_batch} is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices} such as {lo or num_devices} or {lo + num_devices}"
        )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (the train state)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the ``data`` mesh axis."""
    return NamedSharding(mesh, P(AXIS))


def put_replicated(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Place every array of ``tree`` replicated on the mesh (works across hosts)."""
    sharding = replicated(mesh)

    def put(x: Any) -> Any:
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            # Typed PRNG keys (the dropout streams) have no NumPy form: move their raw bits.
            data = jax.make_array_from_process_local_data(
                sharding, np.asarray(jax.random.key_data(x))
            )
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)


def global_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Turn this process's slice of the batch into one global array sharded over ``data``.

    Each process passes only its own examples (``local_batch = global_batch / processes``);
    ``jax.make_array_from_process_local_data`` stitches them into the global array.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def set_batchnorm_axis(model: nnx.Module, axis_name: str | None) -> int:
    """Point every BatchNorm of ``model`` at ``axis_name`` (pmap: statistics over all devices).

    Returns the number of BatchNorm layers changed. Under mesh-jit leave it None: the
    batch is one global array and its statistics are already global.
    """
    n = 0
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            node.axis_name = axis_name
            n += 1
    return n


def pmap_batch(batch: dict[str, np.ndarray], num_local_devices: int) -> dict[str, np.ndarray]:
    """Reshape a local batch ``(B, ...)`` to ``(devices, B/devices, ...)`` for ``jax.pmap``."""
    return {
        k: np.asarray(v).reshape(num_local_devices, -1, *np.shape(v)[1:]) for k, v in batch.items()
    }


def replicate_for_pmap(tree: Any, num_devices: int | None = None) -> Any:
    """Stack ``num_devices`` copies of ``tree`` (leading axis = device) for ``jax.pmap`` inputs.

    The copies are placed with the sharding ``jax.pmap`` gives its outputs (one slice per
    local device over a ``("data",)`` mesh), from host memory: an input placed any other
    way makes the first step compile a second executable, and slicing a one-device array
    onto the devices compiles a small program per array shape.
    """
    n = num_devices or jax.local_device_count()
    mesh = jax.sharding.Mesh(
        np.asarray(jax.local_devices()[:n]), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )
    sharding = NamedSharding(mesh, P(AXIS))
    host = jax.device_get(tree)
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (n, *np.shape(x))), sharding),
        host,
    )


def unreplicate(tree: Any) -> Any:
    """Device 0's copy of a pmap-replicated tree, as host arrays (reads one shard; compiles
    nothing)."""

    def first(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:])
        return x[0]

    return jax.tree.map(first, tree)


def prefetch(iterator: Iterator[Any], transfer, size: int = 2) -> Iterator[Any]:
    """Yield ``transfer(item)`` for each item, keeping ``size`` transfers in flight.

    Device transfers are asynchronous, so queuing the next batches while the current
    step runs means the accelerator never waits for the host copy.
    """
    import collections

    queue: collections.deque = collections.deque()
    for item in iterator:
        queue.append(transfer(item))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
