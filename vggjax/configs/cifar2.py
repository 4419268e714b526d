"""CIFAR-2 (airplane vs bird from CIFAR-10) with the book nets of *Deep Learning with
PyTorch*, ch. 8.

The book trains ``Net`` (18,090 parameters) with plain SGD, lr 1e-2, batch 64, 100 epochs,
no augmentation, CIFAR-10 normalisation, and reports about 0.93 train / 0.89 validation
accuracy. Its variants are selected with ``--config.model``: ``net_width``,
``net_dropout``, ``net_batchnorm``, ``net_depth``, ``net_res``, ``net_res_deep``. The book's
L2 regularisation (``loss + 0.001 * sum(w**2)``) is ``--config.optim.weight_decay=0.002``
(coupled weight decay = 2*lambda; tests check the equivalence step by step).
Prepare CIFAR-10 once on a machine with network: ``tfds build cifar10 --data_dir=DIR``.

    python -m vggjax.train --config=vggjax/configs/cifar2.py --workdir=runs/cifar2_net \
        --config.data_dir=DIR
    python -m vggjax.train --config=vggjax/configs/cifar2.py --config.model=net_res_deep \
        --config.model_options.n_blocks=100 --workdir=runs/cifar2_resdeep
"""

import ml_collections

from vggjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    # Only what differs from default.py, whose 32x32 inputs, batch 64 and per-dataset
    # normalisation (CIFAR-10's channel mean/std here, as the book) are the book's too.
    config.dataset = "cifar10"
    config.classes = (0, 2)  # airplane -> 0, bird -> 1 (the book's label_map)
    config.augment = "none"
    config.model = "net"
    config.model_options = ml_collections.ConfigDict()  # the book's defaults (n_chans1=32 ...)
    default.plain_sgd(config, learning_rate=1e-2, schedule="constant")
    config.optim.momentum = 0.0
    config.optim.weight_decay = 0.0
    config.num_epochs = 100
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    return config
