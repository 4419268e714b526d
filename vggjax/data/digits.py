"""The embedded datasets: scikit-learn's bundled handwritten digits as TFDS builders.

scikit-learn ships 1,797 real 8×8 scans of handwritten digits (UCI "optdigits" test
set, 0..16 grey levels) inside the wheel, so these datasets build offline, in seconds,
into any ``data_dir``. Importing this module registers three TFDS builders:

* ``vggjax_digits``: image ``uint8 (8, 8, 1)`` in 0..255, ``label`` 0..9, ``id`` (row of
  ``sklearn.datasets.load_digits()``). Fixed stratified split: 1,438 train / 359 test.
* ``vggjax_digits2``: the two-class subset 3-vs-8 (the pair most often confused), a
  small stand-in for the CIFAR-2 (airplane vs bird) experiments; label 0 = "3",
  1 = "8"; 285 train / 72 test (the same images as in ``vggjax_digits``'s splits).
* ``vggjax_digits_multilabel``: 2×2 tiles of digits in a ``uint8 (16, 16, 1)`` image;
  each image holds 1..4 digits in random cells (the others blank) and ``label`` is a
  ``float32 (10,)`` multi-hot vector over the digit classes present. ``cells`` and
  ``ids`` (``int64 (4,)``, row-major, -1 = blank) record what was placed where.
  6,000 train / 1,500 test images; train tiles use only train-split digits and test
  tiles only test-split digits, so no source digit is shared between the two.

Everything is a pure function of fixed seeds, so every machine builds byte-identical
datasets. The pipeline builds them automatically on first use (``vggjax.data.get_info(
"vggjax_digits", data_dir)`` does only that); TFDS's own ``tfds build … --imports
vggjax.data.digits`` works too where the ``tfds`` CLI starts (4.9.10's needs apache-beam).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0
DIGITS2_CLASSES = (3, 8)
GRID = 2  # Tiles per side of a multi-label image.
MULTILABEL_SIZES = {"train": 6000, "test": 1500}
MULTILABEL_SEEDS = {"train": 1, "test": 2}

_CITATION = """@misc{optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository, doi:10.24432/C50P49}
}"""
# The module docstring's first paragraph, the description of ``vggjax_digits``.
_MODULE_SUMMARY = __doc__.split("\n\n")[0]
_HOMEPAGE = "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset"


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as ``(images uint8 [1797, 8, 8, 1], labels int64 [1797])``.

    The 0..16 grey levels are rescaled to 0..255 (``round(v * 255 / 16)``) so the images
    look like any other 8-bit image to the rest of the pipeline.
    """
    from sklearn.datasets import load_digits  # Imported lazily: sklearn is slow to import.

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def stratified_split(
    labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted ``(train_indices, test_indices)`` with ``test_fraction`` of each class in test.

    Implemented here with numpy's PCG64 rather than ``sklearn.train_test_split`` so the
    split cannot change when scikit-learn changes its internals.
    """
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: int(round(len(members) * test_fraction))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def tile_digits(
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    num_examples: int,
    seed: int,
    grid: int = GRID,
) -> dict[str, np.ndarray]:
    """Tile digits from ``pool`` (indices into ``images``) into ``num_examples`` multi-label images.

    Each image is a ``grid × grid`` board of 8×8 cells; 1..grid² cells (uniformly many,
    at random places) hold a digit drawn with replacement from ``pool``, the rest are
    blank (0). Returns ``image uint8 [N, 8g, 8g, 1]``, ``label float32 [N, 10]``
    (multi-hot over the classes present), ``cells int64 [N, g²]`` (class per cell,
    row-major, -1 blank) and ``ids int64 [N, g²]`` (source row, -1 blank).
    """
    rng = np.random.default_rng(seed)
    n_cells = grid * grid
    h, w = images.shape[1:3]
    out_images = np.zeros((num_examples, grid * h, grid * w, 1), np.uint8)
    ids = np.full((num_examples, n_cells), -1, np.int64)
    for i in range(num_examples):
        k = rng.integers(1, n_cells + 1)
        where = rng.choice(n_cells, size=k, replace=False)
        ids[i, where] = rng.choice(pool, size=k, replace=True)
        for cell in where:
            r, c = divmod(int(cell), grid)
            out_images[i, r * h : (r + 1) * h, c * w : (c + 1) * w] = images[ids[i, cell]]
    cells = np.where(ids >= 0, labels[np.maximum(ids, 0)], -1)
    multi_hot = np.zeros((num_examples, NUM_CLASSES), np.float32)
    rows, cols = np.nonzero(cells >= 0)
    multi_hot[rows, cells[rows, cols]] = 1.0
    return {"image": out_images, "label": multi_hot, "cells": cells, "ids": ids}


def _splits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    images, labels = load_digits_uint8()
    train_idx, test_idx = stratified_split(labels)
    return images, labels, {"train": train_idx, "test": test_idx}


class _EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared base: pins ``code_path`` for builders that live outside ``tensorflow_datasets``."""

    # TFDS 4.9's default ``code_path`` needs the ``importlib_resources`` backport for
    # builders defined in an installed package (it is only a dependency on Python < 3.9),
    # so building would fail with ModuleNotFoundError; this file is the code path anyway.
    code_path = epath.Path(__file__)


class _DigitsSplitBuilder(_EmbeddedBuilder, skip_registration=True):
    """Shared base of the single-label digit sets: 8×8×1 images, a class label and the source row
    ``id``, over the stratified split of :func:`_splits`. A subclass names its classes
    (``_class_names``) and says which examples it keeps and how it labels them
    (``_generate_examples``)."""

    _description: str
    _class_names: list[str]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self._description,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=self._class_names),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships inside scikit-learn.
        images, labels, splits = _splits()
        return {s: self._generate_examples(images, labels, idx) for s, idx in splits.items()}


class VggjaxDigits(_DigitsSplitBuilder):
    """scikit-learn's 1,797 handwritten digits, 8×8×1 uint8, 10 classes, 1,438/359 split."""

    name = "vggjax_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: stratified 80/20 split, seed 0."}
    _description = _MODULE_SUMMARY
    _class_names = [str(d) for d in range(10)]

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i]), "id": int(i)}


class VggjaxDigits2(_DigitsSplitBuilder):
    """Digits 3 vs 8 from ``vggjax_digits`` (same split), labels 0/1, 285/72 examples."""

    name = "vggjax_digits2"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: classes 3 (label 0) and 8 (label 1)."}
    _description = "Two-class (3 vs 8) subset of scikit-learn's handwritten digits."
    _class_names = [str(d) for d in DIGITS2_CLASSES]

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            if labels[i] in DIGITS2_CLASSES:
                label = DIGITS2_CLASSES.index(int(labels[i]))
                yield int(i), {"image": images[i], "label": label, "id": int(i)}


class VggjaxDigitsMultilabel(_EmbeddedBuilder):
    """1..4 digits tiled 2×2 into 16×16×1 images; multi-hot float32 (10,) labels; 6,000/1,500."""

    name = "vggjax_digits_multilabel"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 2x2 grid, 1..4 digits, seeds 1 (train) / 2 (test)."}

    def _info(self) -> tfds.core.DatasetInfo:
        n_cells = GRID * GRID
        return self.dataset_info_from_configs(
            description=(
                "Multi-label digits: 1..4 of scikit-learn's handwritten digits tiled into a "
                "2x2 grid; the label is multi-hot over the digit classes present."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(8 * GRID, 8 * GRID, 1), encoding_format="png"
                    ),
                    "label": tfds.features.Tensor(shape=(NUM_CLASSES,), dtype=np.float32),
                    "cells": tfds.features.Tensor(shape=(n_cells,), dtype=np.int64),
                    "ids": tfds.features.Tensor(shape=(n_cells,), dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        images, labels, splits = _splits()
        return {
            s: self._generate_examples(
                tile_digits(images, labels, splits[s], MULTILABEL_SIZES[s], MULTILABEL_SEEDS[s])
            )
            for s in ("train", "test")
        }

    def _generate_examples(self, tiles):
        for i in range(len(tiles["image"])):
            yield i, {k: v[i] for k, v in tiles.items()}
