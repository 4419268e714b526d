"""Fashion-MNIST, offline: TFDS's own ``fashion_mnist`` prepared from the files of Debian's
``dataset-fashion-mnist`` package, verified; a damaged file is one line; a short run learns.

Elsewhere these tests skip when the package is not installed; in CI (``CI=true``), where
``.ci/run`` installs it, a missing package is a failure.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vggjax.data import debian, get_info
from vggjax.errors import DataError

if not debian.available("fashion_mnist"):
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError(
            "CI: Debian's dataset-fashion-mnist is not installed (.ci/run installs it)"
        )
    pytest.skip(
        "Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
        allow_module_level=True,
    )

# Sum of every pixel of the 60,000 train images (uint8), from the decompressed Debian files.
TRAIN_PIXEL_SUM = 3_431_114_169


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One preparation of fashion_mnist into a fresh data dir for the whole module."""
    path = str(tmp_path_factory.mktemp("tfds"))
    get_info("fashion_mnist", path)
    return path


def _split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    ds = tfds.builder("fashion_mnist", data_dir=data_dir).as_dataset(split=split, batch_size=-1)
    arrays = tfds.as_numpy(ds)
    return arrays["image"], arrays["label"]


def test_prepared_from_debian_files_is_tfds_own_dataset(data_dir):
    builder = tfds.builder("fashion_mnist", data_dir=data_dir)
    assert builder.is_prepared()
    assert (builder.info.name, str(builder.info.version)) == ("fashion_mnist", "3.0.1")
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
        "train": 60_000,
        "test": 10_000,
    }
    assert builder.info.features["image"].shape == (28, 28, 1)
    assert builder.info.features["label"].names[:2] == ["T-shirt/top", "Trouser"]
    images, labels = _split(data_dir, "train")
    assert images.shape == (60_000, 28, 28, 1) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [6_000] * 10
    assert int(images.sum(dtype=np.int64)) == TRAIN_PIXEL_SUM
    test_images, test_labels = _split(data_dir, "test")
    assert np.bincount(test_labels, minlength=10).tolist() == [1_000] * 10
    # The pixels are the IDX files' own: the same sum as reading the Debian files directly.
    assert int(test_images.sum(dtype=np.int64)) == _idx_pixel_sum("t10k-images-idx3-ubyte.gz")
    info = get_info("fashion_mnist", data_dir)
    assert (info.num_classes, info.channels, info.image_size) == (10, 1, 32)


def _idx_pixel_sum(file: str) -> int:
    with gzip.open(os.path.join(debian.directory("fashion_mnist"), file)) as f:
        return int(np.frombuffer(f.read()[16:], np.uint8).sum(dtype=np.int64))


@pytest.mark.parametrize("damage", ["truncated", "altered", "missing"])
def test_a_damaged_debian_file_is_one_line_and_prepares_nothing(tmp_path, monkeypatch, damage):
    root = tmp_path / "datasets"
    shutil.copytree(debian.directory("fashion_mnist"), root / "fashion-mnist")
    bad = root / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    data = gzip.decompress(bad.read_bytes())
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:5000])
    elif damage == "altered":
        bad.write_bytes(gzip.compress(data[:-1] + bytes([(data[-1] + 1) % 256])))
    else:
        bad.unlink()
    monkeypatch.setenv("VGGJAX_DEBIAN_DATASETS", str(root))
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(DataError) as e:
        get_info("fashion_mnist", data_dir)
    message = str(e.value)
    assert "\n" not in message and str(bad) in message
    assert "apt-get install --reinstall dataset-fashion-mnist" in message
    assert not tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared()


@pytest.mark.slow
def test_a_short_run_on_fashion_mnist_learns(data_dir, tmp_path):
    """A few hundred steps of a narrow VGG take the loss well below ln 10 (chance)."""
    from train_helpers import override

    from vggjax.configs import fashion_mnist
    from vggjax.training import train_and_evaluate

    config = override(
        fashion_mnist.get_config(),
        data_dir=data_dir,
        model="vgg11_bn",
        num_train_steps=250,
        batch_size=64,
        eval_batch_size=1000,
        progress=False,
        compilation_cache="",
        check_trainability=False,
        **{"model_options.width": 0.125, "optim.warmup_epochs": 0.1},
    )
    summary = train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["examples"] == 10_000
    assert summary["loss"] < 0.5 * math.log(10)
    assert summary["accuracy"] > 0.75
