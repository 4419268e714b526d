"""Per-dataset defaults and the description of a dataset: what :func:`vggjax.data.load` uses
when the caller leaves an option at "default".

One row of :data:`_SPECS` per known TFDS dataset (splits, label feature, normalisation
statistics, image size, augmentation, eval crop); any other TFDS image-classification
dataset gets :func:`_spec`'s generic row.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDED_DATASETS = ("vggjax_digits", "vggjax_digits2", "vggjax_digits_multilabel")
CROPS = ("none", "pad", "resized")


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training-time augmentation.

    ``crop``: ``"none"``; ``"pad"`` (zero-pad ``pad_fraction × image_size`` pixels on each
    side, then take a random ``image_size`` crop — the CIFAR recipe, 4 px at 32); or
    ``"resized"`` (Inception-style random crop of ``min_scale..1`` of the area with aspect
    ratio 3/4..4/3, resized to ``image_size`` — the ImageNet recipe). ``flip``: random
    horizontal flip with probability 1/2 (off for digits: a mirrored 3 is not a 3).
    """

    crop: str = "none"
    flip: bool = False
    pad_fraction: float = 0.125
    min_scale: float = 0.08


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Per-dataset defaults; one row of :data:`_SPECS` instead of if-chains."""

    train_split: str = "train"
    test_split: str = "test"
    label: str = "label"  # Feature key of the label.
    mean: tuple[float, ...] = (0.5,)  # In 0..1 pixel units, per channel (or one for all).
    std: tuple[float, ...] = (0.5,)
    image_size: int = 32
    augment: Augment = Augment()
    eval_crop: str = "resize"  # "resize": whole image to a square; "center": central 87.5%.
    manual_files: str | None = None  # What a manual-download dataset needs in downloads/manual.


_SMALL = Augment(crop="pad")
_SMALL_FLIP = Augment(crop="pad", flip=True)
_LARGE = Augment(crop="resized", flip=True)
_IMAGENET = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224, augment=_LARGE)

# Keyed by the TFDS name without config/version ("voc" covers "voc/2007").
_SPECS: dict[str, _Spec] = {
    # Embedded digits: mean/std of the 0..1 pixels of each train split (8x8); no flip.
    "vggjax_digits": _Spec(mean=(0.3055,), std=(0.3759,), augment=_SMALL),
    "vggjax_digits2": _Spec(mean=(0.3114,), std=(0.3745,), augment=_SMALL),
    "vggjax_digits_multilabel": _Spec(mean=(0.1898,), std=(0.3312,), augment=_SMALL),
    "mnist": _Spec(mean=(0.1307,), std=(0.3081,), augment=_SMALL),
    "fashion_mnist": _Spec(mean=(0.2860,), std=(0.3530,), augment=_SMALL_FLIP),
    "cifar10": _Spec(
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), augment=_SMALL_FLIP
    ),
    "cifar100": _Spec(
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), augment=_SMALL_FLIP
    ),
    "imagenette": _Spec(test_split="validation", eval_crop="center", **_IMAGENET),
    "imagenet2012": _Spec(
        test_split="validation",
        eval_crop="center",
        manual_files="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org",
        **_IMAGENET,
    ),
    # VOC classification: train on trainval, test on test; "labels" is the set of object
    # classes in the image (the deduplicated objects/label), turned into a 20-way multi-hot.
    # Crops keep >= 25% of the area so most labelled objects stay in view.
    "voc": _Spec(
        train_split="train+validation",
        label="labels",
        **{**_IMAGENET, "augment": Augment(crop="resized", flip=True, min_scale=0.25)},
    ),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and trainer need to know about a dataset.

    ``num_classes`` is the width of the logits; ``multilabel`` says labels are float32
    multi-hot vectors ``[K]`` rather than int32 class ids. Example counts are over all
    processes (None only when neither TFDS metadata nor tf.data knows them).
    ``channels`` and ``image_size`` describe the images :func:`load` yields (``image_size``
    is the dataset's default when returned by :func:`get_info`). ``classes``: the
    dataset's own ids of the kept classes when a class subset was asked for (label ``i``
    is dataset class ``classes[i]``; ``num_classes``, ``class_names`` and the counts then
    describe the subset), else None.
    """

    name: str
    num_classes: int
    multilabel: bool
    num_train_examples: int | None
    num_test_examples: int | None
    channels: int
    image_size: int
    class_names: tuple[str, ...] = dataclasses.field(repr=False)  # 1,000 for ImageNet.
    train_split: str
    test_split: str
    classes: tuple[int, ...] | None = None


def _base_name(name: str) -> str:
    return name.split(":")[0].split("/")[0]


def _spec(name: str, builder: tfds.core.DatasetBuilder | None = None) -> _Spec:
    base = _base_name(name)
    if base in _SPECS:
        return _SPECS[base]
    # Any other TFDS image-classification dataset: no augmentation, [-1, 1] pixels, and
    # its "test" split if it has one (several only have "validation").
    splits = list(builder.info.splits) if builder is not None else []
    test = (
        "test"
        if "test" in splits or not splits
        else ("validation" if "validation" in splits else "test")
    )
    return _Spec(test_split=test)
