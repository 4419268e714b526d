"""What the scripts in ``experiments/`` share: record, command line, training runs, results.

Each experiment is a thin script over library code: it builds its networks (``vggjax`` and
``vggjax.models.reference``), trains them with :func:`vggjax.training.fit` (here wrapped as
:func:`train`), and writes ``result.json`` plus PNG plots into ``experiments/results/NAME/``
with :func:`write_result`. ``--quick`` is what the test suite runs; ``--full`` restores the
original sizes where a script has reduced them for a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np


def versions() -> dict[str, Any]:
    """The software and machine a result was made with (one record for every experiment).

    Optional packages (PyTorch, scikit-learn) are listed when the experiment imported them.
    """
    import flax
    import jax
    import jaxlib
    import optax

    import vggjax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "vggjax": vggjax.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        # Optional packages, when the experiment imported them (PyTorch cross-checks, sklearn data).
        **{
            key: sys.modules[module].__version__
            for key, module in (("torch", "torch"), ("scikit-learn", "sklearn"))
            if module in sys.modules
        },
    }


def parser(
    doc: str, default_out: str, *, quick: str, full: str | None = None
) -> argparse.ArgumentParser:
    """The command line every experiment has: ``--quick`` (the tests' budget), ``--full``
    (original sizes, when the script reduces them), ``--out DIR``.

    The description is ``doc``'s first paragraph; add the script's own flags to the result.
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick)
    if full:
        p.add_argument("--full", action="store_true", help=full)
    p.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    return p


def results_dir(script: str) -> str:
    """``experiments/results/NAME`` for the experiment script ``script`` (pass ``__file__``)."""
    here = os.path.dirname(os.path.abspath(script))
    return os.path.join(here, "results", os.path.splitext(os.path.basename(script))[0])


def record(argv: Sequence[str] | None, **fields: Any) -> dict[str, Any]:
    """The head of a ``result.json``: the command that makes it, the versions, then ``fields``."""
    args = list(sys.argv[1:] if argv is None else argv)
    script = os.path.relpath(sys.argv[0]) if argv is None else "experiments/<script>.py"
    return {"command": " ".join(["python", script, *args]), "versions": versions(), **fields}


def write_result(result: Mapping[str, Any], out_dir: str) -> str:
    """Write ``result`` as ``out_dir/result.json`` (floats to 9 digits); returns the path."""
    from vggjax.metrics import dump_json

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "result.json")
    dump_json(dict(result), path)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), with the experiments' common style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7, "figure.dpi": 90}
    )
    return plt


def save_figure(fig, path: str, dpi: int = 90, *, rect: Sequence[float] | None = None) -> str:
    """Lay out (``tight_layout``, within ``rect`` if given), save, close; returns ``path``."""
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def panel_grid(plt, n: int, *, cols: int = 3, size: tuple[float, float] = (5.2, 3.6)):
    """A figure of ``n`` panels, rows of at most ``cols``, each ``size`` inches; the spare
    panels of the last row are hidden. Returns ``(fig, axes)`` with ``axes`` 2-D."""
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, axes


def mean_band(ax, curves: Sequence[Sequence[float]], k: int = 1, **line: Any):
    """Plot the mean over ``curves`` (cut to the shortest) of their ``k``-step moving averages,
    ± one std as a band when there are several; ``line`` goes to ``ax.plot``. Returns the line."""
    n = min(len(c) for c in curves)
    smooth = np.asarray([moving_average(c[:n], k) for c in curves])
    xs, mu, sd = np.arange(k, n + 1), smooth.mean(0), smooth.std(0)
    (drawn,) = ax.plot(xs, mu, **line)
    if len(curves) > 1:
        ax.fill_between(xs, mu - sd, mu + sd, color=drawn.get_color(), alpha=0.2)
    return drawn


def digits_arrays(
    dataset: str,
    split: str,
    *,
    image_size: int,
    channels: int,
    n: int | None = None,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole split of an embedded digits dataset (``vggjax_digits``, …) as two arrays.

    NHWC float32 images (dataset normalisation, no augmentation) and int32 labels, in the
    split's order; ``n`` keeps the first ``n``. ``batch_size`` is only how it is read.
    """
    from vggjax.data import load

    batches, _ = load(
        dataset,
        split,
        global_batch_size=batch_size,
        train=False,
        image_size=image_size,
        channels=channels,
        augment="none",
    )
    xs, ys = zip(*((b["image"][b["mask"]], b["label"][b["mask"]]) for b in batches))
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
    return (x, y) if n is None else (x[:n], y[:n])


def shuffled_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.RandomState
) -> Iterator[dict[str, np.ndarray]]:
    """Endless ``{"image", "label", "mask"}`` batches: ``rng.permutation`` once per epoch, the
    remainder of each epoch dropped (one shape to compile); drawn lazily, one epoch at a time."""
    while True:
        perm = rng.permutation(len(y))
        for i in range(0, len(y) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            yield {"image": x[idx], "label": y[idx], "mask": np.ones(len(idx), bool)}


def moving_average(x: Sequence[float], k: int) -> np.ndarray:
    """The ``k``-step moving average of ``x`` (``len(x) - k + 1`` values: full windows only)."""
    return np.convolve(np.asarray(x, np.float64), np.ones(k) / k, mode="valid")


def kernel_grad_norms(metrics: Mapping[str, float], order: Sequence[str]) -> list[float]:
    """‖∂L/∂W‖ of every weight kernel, in ``order`` (:func:`vggjax.diagnostics.kernel_order`),
    from a diagnostics step's metrics (``grad_norm/<layer>/kernel``)."""
    from vggjax import diagnostics

    stats = {
        k: v for k, v in metrics.items() if k.startswith("grad_norm/") and k.endswith("/kernel")
    }
    return [v for _, v in diagnostics.by_layer(stats, "grad_norm", leaves=True, order=order)]


@dataclasses.dataclass
class Trained:
    """A training run's final state, its per-step scalar metrics and the probes taken along the way.

    ``history[key][i]`` is the metric at step ``steps[i]`` (every step with ``log_every=1``);
    ``first_step_seconds`` is the time to the first fetched metrics (compilation included).
    """

    state: Any
    history: dict[str, np.ndarray]
    probes: list[tuple[int, Any]]
    seconds: float
    steps: list[int] = dataclasses.field(default_factory=list)
    first_step_seconds: float | None = None
    stopped: str = ""

    def at(self, step: int) -> dict[str, float]:
        """Every recorded scalar metric of ``step`` (in the order the step returned them)."""
        i = self.steps.index(step)
        return {k: float(v[i]) for k, v in self.history.items()}

    def lists(self, keys: Iterable[str] | None = None) -> dict[str, list[float]]:
        """The history as JSON-ready lists (``keys``: those of them present, default all)."""
        keys = self.history if keys is None else [k for k in keys if k in self.history]
        return {k: self.history[k].tolist() for k in keys}


def _watch(stop: Callable[[int, dict[str, float]], bool] | None):
    """A hook (:class:`vggjax.training.Hook`): times the first fetch, ends the run on ``stop``."""
    from vggjax.training import Hook
    from vggjax.training.loop import host_scalars

    class Watch(Hook):
        def __init__(self) -> None:
            self.t0, self.first = time.perf_counter(), None

        def on_records(self, loop, records, diagnostics) -> None:
            if self.first is None:
                self.first = time.perf_counter() - self.t0
            if stop is not None and any(stop(r.step, host_scalars(r.metrics)) for r in records):
                loop.stopping, loop.stop_reason = True, "stop"  # ends the run after this step

    return Watch()


def train(
    state: Any,
    step: Callable,
    batches: Iterable[Any],
    steps: int,
    *,
    keys: Sequence[str] | None = None,
    probe: Callable[[int, Any], Any] | None = None,
    probe_every: int = 0,
    probe_at_start: bool = False,
    nan_policy: str | None = None,
    log_every: int = 1,
    stop: Callable[[int, dict[str, float]], bool] | None = None,
) -> Trained:
    """``steps`` steps of ``step`` through :func:`vggjax.training.fit`.

    ``step`` is jitted ``(state, batch) -> (state, metrics)``; ``batches`` yields its batches.
    Every step's scalar metrics are kept (``keys`` to restrict them), fetched from the device
    every ``log_every`` steps; ``probe(step, state)`` runs every ``probe_every`` steps (and on
    the initial state with ``probe_at_start``). ``stop(step, metrics)`` sees each fetched
    step's scalar metrics in order; the run ends after the fetch at which it first returns
    True (a divergence or a collapse, say). Divergence is data here, so the NaN policy is
    off unless asked.
    """
    from vggjax.training import fit, hooks

    history = hooks.History(keys)
    watch = _watch(stop)
    run_hooks: list[Any] = [history, watch]
    every = None
    if probe is not None and (probe_every or probe_at_start):
        every = hooks.Every(
            probe_every or steps + 1, probe, at_start=state if probe_at_start else None
        )
        run_hooks.append(every)
    result = fit(
        state,
        step,
        iter(batches),
        total_steps=steps,
        hooks=run_hooks,
        nan_policy=nan_policy,
        log_every=log_every,
    )
    series = {k: history.series(k) for k in (history.rows[0] if history.rows else {})}
    return Trained(
        result.state,
        series,
        every.results if every else [],
        time.perf_counter() - watch.t0,
        list(history.steps),
        watch.first,
        result.stopped,
    )
