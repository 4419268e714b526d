"""ImageNet (ILSVRC-2012) with VGG-16: the recipe of Simonyan & Zisserman (arXiv 1409.1556,
Sec. 3.1), for a TPU pod.

Paper: mini-batch 256, SGD momentum 0.9, L2 weight decay 5e-4, dropout 0.5 on fc6/fc7,
learning rate 1e-2 divided by 10 when the validation accuracy stops improving (three
times; ~74 epochs), 224x224 random crops of rescaled images with horizontal flips
(here Inception-style random-resized crops, min scale 0.08; the paper's fixed-S scale
jittering is not reproduced), Glorot initialisation (the paper's post-submission note; it
also removes the need to pre-train config A first). Expect about 71-72% top-1 (single
centre crop) at the end.

The ImageNet tar files must be placed by hand:
``DIR/downloads/manual/ILSVRC2012_img_{train,val}.tar``, then
``tfds build imagenet2012 --data_dir=DIR`` (once, on one machine; put DIR on a shared
bucket). On every host of a TPU VM pod (the same command; jax.distributed joins the hosts):

    python -m vggjax.train --config=vggjax/configs/imagenet_vgg16.py \
        --workdir=gs://BUCKET/runs/vgg16 --config.data_dir=gs://BUCKET/tensorflow_datasets
"""

import ml_collections

from vggjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "imagenet2012"
    config.image_size = 224
    config.batch_size = 256
    config.model = "vgg16"
    config.model_options = ml_collections.ConfigDict(
        dict(width=1.0, head="fc", init="xavier_uniform", dropout=0.5)
    )
    config.dtype = "bfloat16"
    # default.py's momentum 0.9 and coupled weight decay 5e-4 are the paper's; so is dividing the
    # rate by 10 (plateau factor 0.1) when the validation accuracy (plateau mode "max", checked
    # every epoch) stops improving.
    default.plain_sgd(config, learning_rate=1e-2, schedule="plateau")
    config.optim.plateau_patience = 2
    config.num_epochs = 74
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    return config
