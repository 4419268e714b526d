"""CIFAR-10 with VGG-16-BN: the usual CIFAR VGG recipe (32x32, pad-4 crops + flips, 1x1
classifier input).

Reproduces the common CIFAR-10 VGG-16-BN baseline (about 93-94% test accuracy after 200
epochs in PyTorch implementations). The dataset must be prepared once on a machine with
network (vggjax never downloads): ``tfds build cifar10 --data_dir=DIR``.

    python -m vggjax.train --config=vggjax/configs/cifar10_vgg16_bn.py \
        --workdir=runs/cifar10_vgg16_bn --config.data_dir=DIR
"""

import ml_collections

from vggjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "cifar10"
    config.image_size = 32
    config.channels = 0
    config.batch_size = 128
    config.model = "vgg16_bn"
    config.model_options = ml_collections.ConfigDict(
        dict(
            width=1.0,
            head="fc",
            head_options=dict(pool_size=1, hidden=512),
            init="he_normal",
            dropout=0.5,
        )
    )
    config.optim.learning_rate = 0.05
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 5e-4
    config.optim.weight_decay_mask = "no_bias_norm"
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_epochs = 2.0
    config.num_epochs = 200
    config.log_every_steps = 50
    config.checkpoint_every_steps = 2000
    return config
