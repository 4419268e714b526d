"""What the scripts in ``experiments/`` share: the run record, the command line, training runs, results.

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
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np


def versions() -> dict[str, Any]:
    """The software and machine a result was made with (one record for every experiment and benchmark)."""
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
    }


def parser(
    doc: str, default_out: str, *, quick: str, full: str | None = None
) -> argparse.ArgumentParser:
    """The command line every experiment has: ``--quick`` (the tests' budget), ``--full`` (original
    sizes, when the script reduces them), ``--out DIR``; the description is ``doc``'s first paragraph."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick)
    if full:
        p.add_argument("--full", action="store_true", help=full)
    p.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    return p


def results_dir(script: str) -> str:
    """``experiments/results/NAME`` for the experiment script at path ``script`` (pass ``__file__``)."""
    here = os.path.dirname(os.path.abspath(script))
    return os.path.join(here, "results", os.path.splitext(os.path.basename(script))[0])


def record(argv: Sequence[str] | None, **fields: Any) -> dict[str, Any]:
    """The head of a ``result.json``: the command that makes it, the versions, then ``fields``."""
    args = list(sys.argv[1:] if argv is None else argv)
    script = os.path.relpath(sys.argv[0]) if argv is None else "experiments/<script>.py"
    return {"command": " ".join(["python", script, *args]), "versions": versions(), **fields}


def write_result(result: Mapping[str, Any], out_dir: str) -> str:
    """Write ``result`` as ``out_dir/result.json`` (floats rounded for reading, NaN as strings); returns the path."""
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


def save_figure(fig, path: str, dpi: int = 90) -> str:
    """Save and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


@dataclasses.dataclass
class Trained:
    """A training run's final state, its per-step scalar metrics and the probes taken along the way."""

    state: Any
    history: dict[str, np.ndarray]
    probes: list[tuple[int, Any]]
    seconds: float


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
) -> Trained:
    """``steps`` steps of ``step`` (jitted ``(state, batch) -> (state, metrics)``) through :func:`vggjax.training.fit`.

    Every step's scalar metrics are kept (``keys`` to restrict them); ``probe(step, state)`` runs
    every ``probe_every`` steps (and on the initial state with ``probe_at_start``). Divergence is
    data here, so the NaN policy is off unless asked.
    """
    from vggjax.training import fit, hooks

    history = hooks.History(keys)
    run_hooks: list[Any] = [history]
    every = None
    if probe is not None and (probe_every or probe_at_start):
        every = hooks.Every(
            probe_every or steps + 1, probe, at_start=state if probe_at_start else None
        )
        run_hooks.append(every)
    t0 = time.perf_counter()
    result = fit(
        state, step, iter(batches), total_steps=steps, hooks=run_hooks, nan_policy=nan_policy
    )
    series = {k: history.series(k) for k in (history.rows[0] if history.rows else {})}
    return Trained(result.state, series, every.results if every else [], time.perf_counter() - t0)
