"""``python -m vggjax.aot``: the command line (absl flags + the trainer's ml_collections config).

    python -m vggjax.aot --target=v5e-8 --config=vggjax/configs/imagenet_vgg16.py \\
        --config.model=vgg16_bn --out=aot.json [--max-batch]

The flags are the trainer's (``--config=FILE``, ``--config.KEY=VALUE``) plus ``--target``,
``--out``, ``--max-batch``, ``--max-compiles`` and ``--steps``. A mistake, an unknown target, a
missing compiler, a batch that does not divide over the target's devices or a train step that
does not fit ends in ``error: ...`` on one line and exit status 2 (after the table and the JSON
file, when there is a record to show).
"""

from __future__ import annotations

import json
import os
import sys


def setup_environment() -> None:
    """Before JAX starts: the CPU as JAX's platform (the CUDA plugin then skips its GPU check and
    registers its compiler, and no TPU runtime is opened) and no metadata-server query by libtpu;
    quiet TensorFlow (it only supplies dataset metadata here)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from vggjax.tfenv import quiet_tensorflow

    quiet_tensorflow()
    if "jax" in sys.modules:  # `python -m vggjax.aot` imported vggjax (and JAX) first
        import jax

        jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])


def _flags():
    from absl import flags
    from ml_collections import config_flags

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags.DEFINE_string(
        "target",
        None,
        "What to compile for: v5e-8, v4-32, v5p-128, v6e-256 (any slice), h100x8, 2xh100x8, "
        "h200x8, a100-80x8, a100-40x8, b200x8.",
    )
    config_flags.DEFINE_config_file(
        "config", os.path.join(here, "configs", "default.py"), "Config file.", lock_config=True
    )
    flags.DEFINE_string("out", None, "Write the JSON record to this file.")
    flags.DEFINE_boolean(
        "max-batch", False, "Also find the largest global batch whose train step fits."
    )
    flags.DEFINE_integer("max-compiles", 8, "Most train-step compiles of the --max-batch search.")
    flags.DEFINE_list("steps", ["train", "eval"], "Which steps to compile: train, eval.")
    return flags.FLAGS


def _write(path: str, record: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from vggjax.aot import report, run
    from vggjax.errors import VggjaxError
    from vggjax.train import _cli_error

    del argv
    logging.set_verbosity(logging.ERROR)
    FLAGS = flags.FLAGS
    if not FLAGS.target:
        _cli_error("--target is required, e.g. --target=v5e-8 or --target=h100x8")
    bad = [s for s in FLAGS.steps if s not in ("train", "eval")]
    if bad or not FLAGS.steps:
        _cli_error(f"--steps must name train and/or eval, got {','.join(FLAGS.steps)!r}")
    try:
        record = run.compile_target(
            FLAGS.config,
            FLAGS.target,
            which=tuple(FLAGS.steps),
            max_batch=FLAGS["max-batch"].value,
            max_compiles=FLAGS["max-compiles"].value,
        )
    except VggjaxError as e:
        _cli_error(str(e))
    record["command"] = "python -m vggjax.aot " + " ".join(sys.argv[1:])
    print(report.table(record))
    if FLAGS.out:
        _write(FLAGS.out, record)
        print(f"wrote {FLAGS.out}")
    if record.get("error"):
        _cli_error(record["error"])


def run() -> None:
    """Console entry point: flags, then :func:`main` (call :func:`setup_environment` first)."""
    from absl import app

    from vggjax.train import _flag_error_message, _parse_flags

    try:
        _flags()
    except (KeyError, AttributeError) as e:
        from vggjax.train import _cli_error

        _cli_error(_flag_error_message(e))
    app.run(main, flags_parser=_parse_flags)
