"""``python -m vggjax.diagnose``: the trainability check alone, for any model the trainer can build.

    python -m vggjax.diagnose                                   # the default config
    python -m vggjax.diagnose --config=vggjax/configs/imagenet_vgg16.py --batch_size=8
    python -m vggjax.diagnose --config.model=vgg16 --config.model_options.init='normal(0.01)'
    python -m vggjax.diagnose --workdir=runs/default-...           # a run, as trained so far

Builds ``config.model`` exactly as ``python -m vggjax.train`` would (same config, same flags), takes
one batch of the config's dataset (or, when the dataset is not prepared on this machine, N(0, 1)
images with random labels, said so), runs :func:`vggjax.trainability.check` and prints the
per-layer table — activation std, input dependence (spread across the batch), kernel gain,
gradient norm, dead ReLU units — and the findings. With ``--workdir``, the network is the run's
newest checkpoint under the run's own config, checked against its initialisation on the same
batch: what the trainer's plateau warning points at (a layer that died while training). Nothing is
trained or written.
"""

from __future__ import annotations

import os
import sys

from vggjax.tfenv import quiet_tensorflow

quiet_tensorflow()  # before anything imports TensorFlow (the input pipeline)

import numpy as np  # noqa: E402

from vggjax.errors import DataError, VggjaxError  # noqa: E402


def _classes(config, name: str) -> int:
    """The class count of ``name`` without its data (TFDS's builder info), or the config's."""
    if config.get("num_classes", 0):
        return config.num_classes
    import tensorflow_datasets as tfds

    try:
        return (
            tfds.builder(name, data_dir=config.get("data_dir") or None)
            .info.features["label"]
            .num_classes
        )
    except Exception:  # noqa: BLE001 - no metadata either: a generic classifier
        return 1000


def batch_for(config, batch_size: int):
    """``(batch, num_classes, loss_name, note)``: one training batch of ``config``'s dataset, or a
    synthetic one."""
    from vggjax import data
    from vggjax.training import config as config_lib

    classes = tuple(config.get("classes", ()) or ()) or None
    try:
        info = data.get_info(
            config.dataset,
            config.get("data_dir") or None,
            classes=classes,
            download=config.get("download", True),
        )
    except DataError as e:
        size, channels = config.get("image_size", 0) or 224, config.get("channels", 0) or 3
        num_classes = _classes(config, config.dataset)
        rng = np.random.default_rng(config.seed)
        batch = {
            "image": rng.standard_normal((batch_size, size, size, channels), np.float32),
            "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
            "mask": np.ones(batch_size, bool),
        }
        note = f"{e}; using N(0, 1) images {size}x{size}x{channels} and random labels instead"
        return batch, num_classes, config_lib.loss_name(config, False), note
    plan = config_lib.plan(config, info)
    train, _, _ = data.get_datasets(
        config.dataset,
        global_batch_size=batch_size,
        eval_batch_size=batch_size,
        image_size=plan.image_size,
        seed=config.seed,
        data_dir=config.get("data_dir") or None,
        channels=plan.channels,
        classes=classes,
        augment=config.get("augment", "default"),
        normalize=config.get("normalize", "default"),
    )
    return next(train), plan.num_classes, plan.loss, f"one training batch of {config.dataset}"


def diagnose(config, batch_size: int = 0, workdir: str = ""):
    """Build ``config``'s model and check it on one batch; returns the
    :class:`~vggjax.trainability.Report`. With ``workdir`` (a trainer run), the model gets that
    run's newest checkpoint and is checked against its initialisation."""
    from vggjax import trainability
    from vggjax.training import config as config_lib
    from vggjax.training.state import create_model

    config_lib.check_config(config)
    step = _newest_step(workdir) if workdir else None  # a run without checkpoints fails first
    batch, num_classes, loss, note = batch_for(config, batch_size or min(config.batch_size, 32))
    model = create_model(config, num_classes, batch["image"].shape[-1])
    setup = trainability.Setup(float(config.optim.learning_rate), config.batch_size)
    if not workdir:
        print(f"{config.model}: {note}", file=sys.stderr)
        return trainability.check(model, batch, loss, num_classes, setup=setup)
    before = trainability.check(model, batch, loss, num_classes, setup=setup)
    trained = _restored(model, workdir, step)
    print(f"{config.model} at step {step} of {workdir}: {note}", file=sys.stderr)
    return trainability.check(trained, batch, loss, num_classes, before=before, setup=setup)


def run_config(workdir: str):
    """The config a trainer run wrote (``WORKDIR/config.json``), or a one-line DataError."""
    import json

    import ml_collections

    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except FileNotFoundError:
        raise DataError(
            f"--workdir={workdir}: no config.json there; point it at the --workdir of a "
            "python -m vggjax.train run"
        ) from None
    except ValueError as e:
        raise DataError(f"{path} is not a trainer config ({e}); was it edited?") from None


def _newest_step(workdir: str) -> int:
    """The newest checkpoint step of a trainer run, or a one-line DataError."""
    root = os.path.join(workdir, "checkpoints")
    steps = [int(p) for p in os.listdir(root) if p.isdigit()] if os.path.isdir(root) else []
    if not steps:
        raise DataError(
            f"--workdir={workdir} has no checkpoint yet; run the trainer until its first "
            "checkpoint (config.checkpoint_every_steps), or check the initialisation with --config"
        )
    return max(steps)


def _restored(model, workdir: str, step: int):
    """``model`` with the weights and BatchNorm statistics of the run's checkpoint ``step``."""
    from flax import nnx

    from vggjax import checkpoint
    from vggjax.training.state import split_model

    graphdef, params, frozen, stats, rngs = split_model(model)
    target = {"params": params, "frozen": frozen, "batch_stats": stats}
    loaded, _ = checkpoint.restore_params_from(workdir, target, step=step)
    return nnx.merge(graphdef, loaded["params"], loaded["frozen"], loaded["batch_stats"], rngs)


def main(argv) -> None:
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.ERROR)  # as the trainer: JAX's and TFDS's chatter stays off
    try:
        workdir = flags.FLAGS.workdir
        config = run_config(workdir) if workdir else flags.FLAGS.config
        report = diagnose(config, flags.FLAGS.batch_size, workdir)
    except VggjaxError as e:
        from vggjax.train import _cli_error

        _cli_error(str(e))
    print(report.table())


def run() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    from vggjax.train import _cli_error, _flag_error_message, _parse_flags

    here = os.path.dirname(os.path.abspath(__file__))
    try:  # as the trainer: an unknown --config.KEY is one line
        config_flags.DEFINE_config_file(
            "config", os.path.join(here, "configs", "default.py"), "Config file.", lock_config=True
        )
    except (KeyError, AttributeError) as e:
        _cli_error(_flag_error_message(e))
    flags.DEFINE_integer(
        "batch_size", 0, "Examples in the checked batch (default: the config's, at most 32)."
    )
    flags.DEFINE_string(
        "workdir", "", "A trainer run: check its newest checkpoint under its own config.json."
    )
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
