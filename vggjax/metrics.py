"""Where training metrics go: ``metrics.jsonl``, TensorBoard events, a progress bar, a PNG.

Only process 0 writes. Every record is one JSON object per line with ``step`` and
``kind`` ("train", "eval", "diag" or "summary"), so a run can be re-plotted or compared
with ``pandas.read_json(path, lines=True)``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
import sys
import time
from typing import Any, Iterator, Mapping

import jax


def _clean(value: Any) -> Any:
    """JSON-safe scalar: floats stay floats (NaN/inf as strings), arrays become floats."""
    try:
        value = float(value) if not isinstance(value, (str, bool, int)) else value
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Append metrics to ``workdir/metrics.jsonl`` and TensorBoard; show a progress bar.

    Args:
      workdir: run directory (created if missing).
      total_steps: for the progress bar's ETA.
      progress: show a tqdm bar (automatically quiet when stderr is not a terminal).
    """

    def __init__(
        self, workdir: str, total_steps: int, *, progress: bool = True, start_step: int = 0
    ):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except Exception as e:  # TensorBoard is a nicety; never stop training for it.
            print(f"warning: TensorBoard logging disabled ({e})", file=sys.stderr)
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        """Record ``values`` (scalars) for ``step`` under ``kind``."""
        if not self.active:
            return
        record = {"step": int(step), "kind": kind, **{k: _clean(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if (
                    k not in ("step", "kind")
                    and isinstance(v, (int, float))
                    and not isinstance(v, bool)
                ):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def progress(self, step: int, postfix: Mapping[str, Any]) -> None:
        """Advance the bar to ``step`` showing ``postfix`` (loss, images/s …)."""
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                refresh=True,
            )

    def log(self, message: str) -> None:
        """Print a line on process 0 without breaking the progress bar."""
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._file.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


_NUMBER_LIST = re.compile(r"\[[-+0-9.eEnulaNInfity,\s]*\]")


def _round(obj: Any) -> Any:
    """Floats to 9 significant digits (enough to round-trip a float32), recursively."""
    if isinstance(obj, float):
        return float(f"{obj:.9g}")
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj


def dump_json(obj: Any, path: str) -> None:
    """Write a result record ``obj`` as indented JSON, floats to 9 significant digits, lists
    of numbers on one line."""
    text = json.dumps(_round(obj), indent=1)
    text = _NUMBER_LIST.sub(
        lambda m: (
            "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",") if x.strip()) + "]"
        ),
        text,
    )
    with open(path, "w") as f:
        f.write(text + "\n")


def plot_curves(path: str, out_png: str) -> str:
    """Plot train loss and train/eval accuracy of ``metrics.jsonl`` at ``path`` into ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_jsonl(path)
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if evals:
        ax1.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval")
    ax1.set(xlabel="step", ylabel="loss", title="loss")
    ax1.legend()
    key = "accuracy"
    ax2.plot(
        [r["step"] for r in train if key in r], [r[key] for r in train if key in r], label="train"
    )
    if evals:
        ax2.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label="eval")
    ax2.set(xlabel="step", ylabel=key, title=key)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


class Throughput:
    """Images per second between calls to :meth:`lap`."""

    def __init__(self):
        self._t = time.perf_counter()

    def lap(self, images: int) -> float:
        now = time.perf_counter()
        rate = images / max(now - self._t, 1e-9)
        self._t = now
        return rate


class Timings:
    """Wall seconds a run spends per activity (``"eval"``, ``"checkpoint"``, ``"input"``: waiting
    for the next batch), to show where a run's time goes."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def time(self, what: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``what``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[what] += time.perf_counter() - t0

    def iterate(self, what: str, iterator: Iterator[Any]) -> Iterator[Any]:
        """``iterator``'s items, the time spent waiting for each added to ``what``."""
        while True:
            with self.time(what):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
