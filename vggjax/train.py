"""``python -m vggjax.train``: the trainer's command line (absl flags + ml_collections configs).

    python -m vggjax.train                                  # default config, embedded digits
    python -m vggjax.train --config=vggjax/configs/cifar10_vgg16_bn.py --workdir=runs/c10 \\
        --config.batch_size=128 --config.optim.learning_rate=0.05

This module is only the command line: flags, loading the config, multi-host start-up, the
huge-page restart (:mod:`vggjax.hostmem`) and one-line errors. The run itself is
:func:`vggjax.training.train_and_evaluate` (config → data → model → :func:`vggjax.training.fit`);
the names users import from here (``make_train_step``, ``state_from_model``, ``TrainState``, …)
are re-exported from :mod:`vggjax.training`.

A user mistake ends in ``error: ...`` on one line and exit status 2 (``docs/bad-inputs.md``);
a preempted run (SIGTERM) checkpoints its step and exits with status 143; the first Ctrl-C does the
same with status 130, a second one stops at once (one line, status 130).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from vggjax.tfenv import quiet_tensorflow

quiet_tensorflow()  # before anything imports TensorFlow (the input pipeline)

from vggjax import hostmem, parallel  # noqa: E402
from vggjax.errors import VggjaxError  # noqa: E402
from vggjax.training import (  # noqa: E402, F401 - re-exported: the names users call from vggjax.train
    TrainState,
    check_workdir,
    create_model,
    default_workdir,
    describe_nonfinite,
    enable_compilation_cache,
    evaluate,
    fit,
    forward_order,
    init_state,
    leaf_names,
    loss_and_metrics,
    make_eval_step,
    make_train_step,
    merge,
    rewind_metrics,
    split_model,
    state_from_model,
    train_and_evaluate,
)
from vggjax.training.hooks import INTERRUPTED_EXIT_CODE, interrupted_at_once  # noqa: E402

# 128 + SIGTERM, what a shell reports for a process SIGTERM ended: schedulers that requeue
# preempted jobs see "not finished", and `python -m vggjax.train && next` stops here.
PREEMPTED_EXIT_CODE = 143


def _flags():
    from absl import flags
    from ml_collections import config_flags

    here = os.path.dirname(os.path.abspath(__file__))
    flags.DEFINE_string(
        "workdir", None, "Run directory (default: a fresh ./runs/CONFIG-TIMESTAMP)."
    )
    config_flags.DEFINE_config_file(
        "config", os.path.join(here, "configs", "default.py"), "Config file.", lock_config=True
    )
    flags.DEFINE_string(
        "coordinator_address", None, "Multi-host: HOST:PORT of process 0 (not needed on Cloud TPU)."
    )
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
    flags.DEFINE_string(
        "cpu_collectives", None, "CPU multi-process collectives implementation, e.g. gloo."
    )
    return flags.FLAGS


def main(argv: list[str]) -> None:
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.ERROR)  # TF/TFDS deprecation chatter; our messages are printed
    FLAGS = flags.FLAGS
    parallel.initialize_distributed(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        cpu_collectives=FLAGS.cpu_collectives,
    )
    config_path = getattr(FLAGS["config"], "config_filename", "default")
    name = os.path.splitext(os.path.basename(str(config_path)))[0] or "default"
    workdir = FLAGS.workdir or default_workdir(name)
    _quiet_orbax_errors()
    try:
        summary = train_and_evaluate(FLAGS.config, workdir)
    except VggjaxError as e:
        _cli_error(str(e))
    except KeyboardInterrupt:  # Ctrl-C before the first step: stop at once, in one line
        interrupted_at_once(os.path.join(os.path.abspath(workdir), "checkpoints"))
    if summary.get("preempted"):
        sys.exit(INTERRUPTED_EXIT_CODE if summary["signal"] == "SIGINT" else PREEMPTED_EXIT_CODE)


class _DropOrbaxErrors:
    """Logging filter: orbax logs a failed background write as ERROR with a traceback;
    the trainer reports the same failure as its one-line error, so drop orbax's copy."""

    def filter(self, record) -> bool:
        return not (record.levelno >= 30 and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _quiet_orbax_errors() -> None:
    import logging as std_logging

    for name in ("absl", ""):
        for handler in std_logging.getLogger(name).handlers:
            handler.addFilter(_DropOrbaxErrors())


def _cli_error(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` (on one line) to stderr and exit with status 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def _flag_error_message(e: BaseException) -> str:
    """One line for a bad command line: an absl flag error or an unknown ``--config.KEY``."""
    from absl import flags

    if isinstance(e, flags.Error):
        return str(e)
    # ml_collections reports an unknown override key as
    # AttributeError(KeyError("'key'\nDid you mean ...")).
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    if isinstance(e, OSError):  # the --config file is missing or failed to import
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        return f"cannot load the --config file: {lines[-1] if lines else e}"
    text = str(e.args[0]) if e.args else str(e)
    key, *hint = text.splitlines() or [""]
    key = key.strip("'\"")
    # Name the whole override (--config.optim.lr), not only its last component.
    given = [a.split("=")[0][2:] for a in sys.argv[1:] if a.startswith("--config.")]
    full = next(
        (g for g in given if g == f"config.{key}" or g.endswith(f".{key}")), f"config.{key}"
    )
    message = f"unknown config key {full!r}"
    return message + (
        f" ({' '.join(hint)})" if hint else "; see the config file for the valid keys"
    )


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
        # ml_collections defers a config file's load error to the first use of the config.
        getattr(flags.FLAGS.config, "model", None)
        return rest
    except (flags.Error, KeyError, AttributeError, OSError) as e:
        _cli_error(_flag_error_message(e))


def run() -> None:
    """Console entry point (``vggjax-train``)."""
    from absl import app

    hostmem.restart_with_hugepages()  # once, before any work (VGGJAX_HUGEPAGES=0: not at all)
    try:
        # Defining --config already applies the --config.KEY=VALUE overrides of the
        # default config file (an unknown key fails here, not in flag parsing).
        _flags()
    except (KeyError, AttributeError) as e:
        _cli_error(_flag_error_message(e))
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
