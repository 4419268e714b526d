"""Shared by the trainer tests and the multi-process worker: a tiny config, fixed
synthetic batches, and a few train steps driven through the library's own functions.

``run_steps`` is cached, so the tests of one pytest session that need the same run
(8-device mesh-jit is the reference of several) compile and train it once.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

NUM_CLASSES = 10
GLOBAL_BATCH = 16


def tiny_config(**overrides):
    """The default config shrunk for tests: width 1/16, hidden 16, no dropout, constant lr.

    Keys of ``overrides`` may be dotted (``"optim.learning_rate"``).
    """
    from vggjax.configs import default

    c = default.get_config()
    c.model_options.width = 0.0625
    c.model_options.head_options.hidden = 16
    # Dropout off: pmap draws one dropout mask per device from a replicated key while
    # mesh-jit draws one over the global batch, so only dropout-free nets agree exactly.
    c.model_options.dropout = 0.0
    c.optim.schedule = "constant"
    c.optim.warmup_epochs = 0.0
    c.batch_size = GLOBAL_BATCH
    c.log_every_steps = 1
    c.progress = False
    c.compilation_cache = ""
    return override(c, **overrides)


def override(config, **overrides):
    """Set ``config``'s fields from ``overrides``, whose keys may be dotted; returns ``config``."""
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return config


def synthetic_batches(
    steps: int, batch: int = GLOBAL_BATCH, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``steps`` global batches of N(0,1) 32x32x1 images with random labels (all valid)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.standard_normal((batch, 32, 32, 1), dtype=np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
            "mask": np.ones(batch, bool),
        }
        for _ in range(steps)
    ]


class Run(NamedTuple):
    losses: np.ndarray  # per step
    initial: Any  # TrainState before training (host)
    final: Any  # TrainState after training (host; None with several processes)
    compiles: int  # XLA compilations while stepping: 1 = the step compiled once, nothing else


_COMPILES = [0]


def _count_compile(event: str, duration: float, **kwargs: Any) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


@functools.lru_cache(maxsize=None)
def run_steps(
    parallel: str = "jit", num_devices: int = 0, steps: int = 3, freeze: tuple[str, ...] = ()
):
    """Train ``steps`` steps on ``synthetic_batches``; see :class:`Run`.

    Uses ``init_state`` and the trainer's own runner (``training.make_runner``: mesh-jit over
    ``num_devices`` devices of all processes, 0 = all, or pmap). With several processes
    each feeds only its own rows of every global batch, as the input pipeline does.
    """
    import jax

    from vggjax import optim, training

    config = tiny_config(parallel=parallel, num_devices=num_devices, freeze=freeze)
    tx = optim.make_optimizer(config.optim, steps_per_epoch=10, total_steps=steps)
    graphdef, eval_graphdef, make = training.init_state(config, NUM_CLASSES, 1, tx)
    state = make()
    initial = jax.device_get(state)  # before any step can donate its buffers
    runner, state = training.make_runner(
        config, graphdef, eval_graphdef, tx, "softmax_cross_entropy", state, False, "tests"
    )
    n, i = jax.process_count(), jax.process_index()
    local = config.batch_size // n
    losses = []
    batches = synthetic_batches(steps, config.batch_size)
    jax.monitoring.register_event_duration_secs_listener(_count_compile)
    start = _COMPILES[0]
    try:
        for batch in batches:
            mine = {k: v[i * local : (i + 1) * local] for k, v in batch.items()}
            state, metrics = runner.train_step(state, runner.put_batch(mine))
            losses.append(float(runner.fetch(metrics)["loss"]))
    finally:
        jax.monitoring.unregister_event_duration_listener(_count_compile)
    compiles = _COMPILES[0] - start
    final = jax.device_get(runner.to_host_state(state)) if n == 1 else None
    return Run(np.array(losses), initial, final, compiles)
