"""Fine-tune imported ImageNet weights (torchvision or Keras, via ``python -m vggjax.convert``)
on a new dataset.

The model is a full-width torchvision-layout VGG (``fc`` head: adaptive 7×7 pooling,
4096-4096-classes), so every converted tensor fits; ``--config.init_from`` loads them and
the last layer, whose class count changed, keeps its fresh initialisation. By default the
backbone is frozen (``features/*``) and the classifier trains; ``--config.freeze='()'``
trains everything, ``--config.freeze="('features/*','head/fc6/*','head/fc7/*')"`` only the
new last layer. ``--config.model_options.head=fc_conv`` trains the same weights as an
FC-as-convolution head (``init_from`` reshapes fc6-fc8's kernels). Inputs are normalised
with the ImageNet mean/std (torchvision's preprocessing; for Keras weights, see the README).

    python -m vggjax.convert --from torchvision --arch vgg16 --input vgg16-397923af.pth \
        --output weights/vgg16
    python -m vggjax.train --config=vggjax/configs/finetune.py --config.init_from=weights/vgg16 \
        --config.model=vgg16 --config.dataset=imagenette --workdir=runs/ft
"""

import ml_collections

from vggjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "imagenette"
    config.image_size = 224
    config.channels = 3
    config.normalize = "imagenet"
    config.model = "vgg16"
    config.model_options = ml_collections.ConfigDict(
        # fc's 7x7 pooling and fc_conv's 7x7 fc6 are the heads' defaults, so either head works here.
        dict(width=1.0, head="fc", head_options=dict(hidden=4096), init="torchvision", dropout=0.5)
    )
    config.freeze = ("features/*",)
    # config.init_from (default ""): the --output of `python -m vggjax.convert`, or another run's
    # workdir. Batch 64, momentum 0.9, weight decay 5e-4 and warmup-cosine are default.py's.
    config.optim.learning_rate = 1e-3
    config.optim.nesterov = False
    config.optim.warmup_epochs = 0.5
    config.num_epochs = 10
    config.checkpoint_every_steps = 500
    return config
