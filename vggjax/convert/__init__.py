r"""Weights in and out: torchvision and Keras VGG checkpoints ⇄ vggjax, and fc → fc_conv.

Command line (writes an orbax checkpoint that ``python -m vggjax.train
--config.init_from=DIR`` fine-tunes from)::

    python -m vggjax.convert --from torchvision --arch vgg16 \
        --input vgg16-397923af.pth --output weights/vgg16
    python -m vggjax.convert --from keras --arch vgg16 \
        --input vgg16.weights.h5 --output weights/vgg16_keras
    python -m vggjax.convert ... --head fc_conv  # fc6 as a 7x7 conv: dense eval of large images

Library::

    model = vggjax.convert.from_torchvision(torchvision_model_or_state_dict_or_path, "vgg16")
    state_dict = vggjax.convert.to_torchvision(model)      # exact inverse
    model = vggjax.convert.from_keras(keras_model_or_path)  # VGG16 / VGG19, with or without top
    dense = vggjax.convert.to_fc_conv(model)                # same weights, fc6 as a conv
    vggjax.convert.save(model, "weights/vgg16"); model = vggjax.convert.load("weights/vgg16")

Layouts: PyTorch convs are OIHW, vggjax (Flax) HWIO; PyTorch flattens the 7×7 pooled map in
(c, h, w) order before ``classifier.0``, vggjax in (h, w, c) order (NHWC), so fc6's input
axis is permuted; BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` become
``scale``/``bias``/``mean``/``var``. Keras (channels-last) already uses HWIO kernels and the
(h, w, c) flatten order. PyTorch files are read with ``torch.load(weights_only=True)`` or
from ``.safetensors``; arbitrary pickled objects are refused, never unpickled. Keras files
(``.weights.h5``, ``.keras``, and the legacy Keras-2 ``.h5`` weights that
``keras.applications`` downloads) are read with h5py; no Keras object is deserialised.

Inputs the imported weights expect: torchvision's are RGB in [0, 1] normalised with the
ImageNet mean/std, Keras' are "caffe" style (BGR, 0..255, mean-subtracted); see
:func:`vggjax.features.normalize`. This package is the only place that knows about NCHW.

Modules: ``torchvision`` (with ``torch_layout`` for the tensor layouts and
``torch_files`` for reading ``.pth``/``.safetensors``), ``keras``, ``fc_conv``, ``store``
(:func:`save`/:func:`load`), ``cli`` (``python -m vggjax.convert``) and ``common``.
"""

from vggjax.convert.cli import PREPROCESSING, main  # noqa: F401 - PREPROCESSING is public too
from vggjax.convert.fc_conv import to_fc_conv
from vggjax.convert.keras import from_keras
from vggjax.convert.store import FORMAT, load, save  # noqa: F401 - FORMAT is public too
from vggjax.convert.torch_files import load_torch_state_dict
from vggjax.convert.torch_layout import torchvision_module_names
from vggjax.convert.torchvision import from_torchvision, to_torchvision

__all__ = [
    "from_torchvision",
    "to_torchvision",
    "from_keras",
    "to_fc_conv",
    "save",
    "load",
    "load_torch_state_dict",
    "torchvision_module_names",
    "main",
]
