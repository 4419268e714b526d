"""VOC 2007 multi-label classification with the WSDR net (VGG-16 conv1-5 + a GAP head, seed 000).

The reference case: VGG-16's convolutions (no pool after conv5), then ConvReLU(512->1024)
and ConvReLU(1024->20) with a ReLU on the class scores, 14x14 average pooling, the
multilabel soft-margin loss and SGD, PyTorch-default initialisation. The poster saw the
outputs and gradients become exactly zero after 2-3 iterations; ``experiments/gap_dead_relu.py``
reproduces why and compares the fixes. Here ``model_options`` selects them:
``score_relu=False`` (linear scores), ``fc=True`` (an FC layer after the pooling, the
poster's fix), or ``--config.model=wsdr_bn`` (BatchNorm, eps 1e-3, frozen running stats).
Prepare VOC 2007 once on a machine with network: ``tfds build voc/2007 --data_dir=DIR``.

    python -m vggjax.train --config=vggjax/configs/voc2007_wsdr.py --workdir=runs/voc_wsdr \
        --config.data_dir=DIR
    python -m vggjax.train --config=vggjax/configs/voc2007_wsdr.py \
        --config.model_options.fc=True --workdir=runs/voc_wsdr_fc
"""

import ml_collections

from vggjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "voc/2007"
    config.image_size = 224  # conv5 map 14x14, so the global average is the original AvgPool2d(14)
    config.batch_size = 16
    config.model = "wsdr"
    config.model_options = ml_collections.ConfigDict(dict(score_relu=True, fc=False))
    config.loss = "multilabel_soft_margin"
    # SGD with default.py's momentum 0.9 and weight decay 5e-4, on every parameter.
    default.plain_sgd(config, learning_rate=1e-3, schedule="constant")
    config.num_epochs = 30
    config.checkpoint_every_steps = 1000
    config.diagnostics.enabled = True
    config.diagnostics.every_steps = 10
    return config
