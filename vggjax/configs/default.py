"""Quickstart: VGG-11-BN (width 1/4) on the embedded handwritten digits, offline, in minutes
on a CPU.

The digits are scikit-learn's bundled 1,797 real 8x8 scans (UCI optical digits), built
locally into a TFDS dataset (``vggjax_digits``: 1,438 train / 359 test, stratified) and
upsampled to 32x32 so all five VGG poolings apply. Target: >= 97% test accuracy.

    python -m vggjax.train                                   # this config, ./runs/default-*
    python -m vggjax.train --config=vggjax/configs/default.py --workdir=runs/digits \
        --config.num_epochs=5 --config.optim.learning_rate=0.1
"""

import ml_collections

from vggjax import optim


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Data
    config.dataset = "vggjax_digits"
    config.classes = ()  # a subset of class ids (relabelled 0..k-1), e.g. (0, 2); () = all
    config.data_dir = ""  # "" = TFDS's default (~/tensorflow_datasets)
    # A dataset not prepared in data_dir is downloaded and prepared by TFDS on first use (the
    # embedded digits are built, fashion_mnist is read from Debian's files where installed);
    # False (or VGGJAX_OFFLINE=1 in the environment) forbids downloads.
    config.download = True
    config.image_size = 32
    config.channels = 0  # 0 = the dataset's own (1 for digits)
    config.augment = "default"  # per dataset; "none" or a dict of vggjax.data.Augment fields
    config.normalize = "default"
    config.batch_size = 64  # global, over all devices and hosts
    config.eval_batch_size = 0  # 0 = batch_size
    # Model
    config.model = "vgg11_bn"
    config.num_classes = 0  # 0 = the dataset's
    config.model_options = ml_collections.ConfigDict(
        dict(
            width=0.25,
            head="fc",
            # CIFAR-style classifier: pool the 1x1 map, 256 hidden units.
            head_options=dict(pool_size=1, hidden=256),
            init="he_normal",
            dropout=0.3,
        )
    )
    config.freeze = ()  # globs over parameter paths, e.g. ("features/*",)
    config.dtype = "float32"  # or "bfloat16" compute
    # How convs and pools are lowered (vggjax.ops.Policy): "auto" = native XLA ops on GPU/TPU,
    # the CPU-tuned formulations on CPU; "xla" or "cpu" everywhere; "auto,field=value" to tune.
    config.compute = "auto"
    config.loss = "auto"  # softmax cross-entropy, or multilabel soft margin for multi-label data
    # Optimizer (fields of vggjax.optim.DEFAULTS)
    config.optim = optim.default_config()
    config.optim.learning_rate = 0.05
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 5e-4
    config.optim.weight_decay_mask = "no_bias_norm"
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_epochs = 1.0
    # Loop
    config.num_epochs = 15
    config.num_train_steps = 0  # 0 = num_epochs * steps_per_epoch
    config.log_every_steps = 10
    config.eval_every_epochs = 1.0
    config.checkpoint_every_steps = 100
    config.keep_checkpoints = 3
    config.init_from = ""  # another run's workdir: start from its weights
    config.seed = 0
    config.parallel = "jit"  # "jit" (mesh + NamedSharding) or "pmap"
    config.num_devices = 0  # 0 = all
    config.nan_policy = "stop"  # or "skip"
    config.diagnostics = ml_collections.ConfigDict(dict(enabled=False, every_steps=100))
    # Before the first step, one forward + backward on the first batch looks for the ways the
    # reference nets fail to train; while training, a watch for a loss stuck at ln C, exactly-zero
    # gradients and blow-ups. Warnings only (vggjax.trainability; python -m vggjax.diagnose).
    config.check_trainability = True
    config.progress = True
    # JAX persistent compilation cache, plus the traced steps (vggjax.stepcache); "" = off.
    config.compilation_cache = "~/.cache/vggjax/jax"
    return config


def plain_sgd(config: ml_collections.ConfigDict, learning_rate: float, schedule: str) -> None:
    """Set ``config.optim`` to the SGD of the papers and the book: no Nesterov, no warm-up and
    weight decay on every parameter, at ``learning_rate`` under ``schedule``; momentum and the
    decay rate stay as they are."""
    config.optim.learning_rate = learning_rate
    config.optim.nesterov = False
    config.optim.weight_decay_mask = "all"
    config.optim.schedule = schedule
    config.optim.warmup_epochs = 0.0
