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
    # Only what differs from default.py: its 32x32 inputs, the dataset's own channels, its fc
    # head pooled to 1x1 with he_normal init, and its optimizer (SGD lr 0.05, Nesterov momentum
    # 0.9, weight decay 5e-4 off biases and norms, warmup-cosine) are the CIFAR recipe's too.
    config.dataset = "cifar10"
    config.batch_size = 128
    config.model = "vgg16_bn"
    config.model_options.width = 1.0
    config.model_options.head_options.hidden = 512
    config.model_options.dropout = 0.5
    config.optim.warmup_epochs = 2.0
    config.num_epochs = 200
    config.log_every_steps = 50
    config.checkpoint_every_steps = 2000
    return config
