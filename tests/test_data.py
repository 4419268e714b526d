"""Input pipeline: embedded digits builders, determinism, resume, sharding, padding, errors."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vggjax.data import Augment, get_info, load
from vggjax.data import digits
from vggjax.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One offline build of the embedded datasets for the whole module (~2 s)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    for name in ("vggjax_digits", "vggjax_digits2", "vggjax_digits_multilabel"):
        get_info(name, path)
    return path


def _load(data_dir, name="vggjax_digits", **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    kw.setdefault("global_batch_size", 64)
    return load(name, data_dir=data_dir, **kw)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_digits_build_offline_with_fixed_splits(data_dir):
    sizes = {}
    for name in ("vggjax_digits", "vggjax_digits2", "vggjax_digits_multilabel"):
        builder = tfds.builder(name, data_dir=data_dir)
        assert builder.is_prepared()
        sizes[name] = {s: builder.info.splits[s].num_examples for s in ("train", "test")}
    assert sizes["vggjax_digits"] == {"train": 1438, "test": 359}  # 1,797 in all.
    assert sizes["vggjax_digits2"] == {"train": 285, "test": 72}
    assert sizes["vggjax_digits_multilabel"] == {"train": 6000, "test": 1500}

    builder = tfds.builder("vggjax_digits", data_dir=data_dir)
    ids = {s: {int(ex["id"]) for ex in tfds.as_numpy(builder.as_dataset(split=s))} for s in ("train", "test")}
    assert not ids["train"] & ids["test"] and len(ids["train"] | ids["test"]) == 1797
    images, labels = digits.load_digits_uint8()
    test_counts = np.bincount(labels[sorted(ids["test"])], minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * np.bincount(labels)) <= 1)  # Stratified.

    info = get_info("vggjax_digits2", data_dir)
    assert (info.num_classes, info.class_names, info.multilabel) == (2, ("3", "8"), False)


def test_batch_shapes_dtypes_and_normalisation(data_dir):
    it, info = _load(data_dir, train=True, image_size=32)
    batch = next(it)
    assert batch["image"].shape == (64, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
    assert batch["mask"].dtype == np.bool_ and batch["mask"].all()
    assert info.num_classes == 10 and info.channels == 1 and info.num_train_examples == 1438
    lo, hi = (0 - 0.3055) / 0.3759, (1 - 0.3055) / 0.3759
    assert lo - 1e-4 <= batch["image"].min() and batch["image"].max() <= hi + 1e-4
    assert abs(batch["image"].mean()) < 0.5 and 0.5 < batch["image"].std() < 1.5

    raw, _ = _load(data_dir, train=False, normalize="none", channels=3, image_size=16)
    first = next(iter(raw))
    assert first["image"].shape == (64, 16, 16, 3) and 0 <= first["image"].min()
    assert 0.99 < first["image"].max() <= 1.0 + 1e-6
    np.testing.assert_array_equal(first["image"][..., 0], first["image"][..., 2])


def test_same_seed_same_batches_and_other_seed_differs(data_dir):
    a = _take(_load(data_dir, train=True, seed=7, augment={"flip": True})[0], 3)
    b = _take(_load(data_dir, train=True, seed=7, augment={"flip": True})[0], 3)
    c = _take(_load(data_dir, train=True, seed=8, augment={"flip": True})[0], 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["label"], c[0]["label"])


@pytest.mark.parametrize("start_step", [5, 6])  # 5: mid-epoch; 6: past the first epoch boundary.
def test_start_step_resumes_exactly(data_dir, start_step):
    # 1438 train examples / 256 = 5.6 batches per epoch, so batch 5 straddles two epochs.
    fresh = _take(_load(data_dir, train=True, seed=3, global_batch_size=256)[0], 8)
    resumed = _take(_load(data_dir, train=True, seed=3, global_batch_size=256, start_step=start_step)[0], 8 - start_step)
    for x, y in zip(fresh[start_step:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_eval_padding_and_mask(data_dir):
    batches = list(_load(data_dir, train=False, global_batch_size=100)[0])
    assert len(batches) == 4 and all(b["image"].shape == (100, 32, 32, 1) for b in batches)
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == 359 and masks[:359].all() and not masks[359:].any()
    assert not batches[-1]["image"][59:].any() and not batches[-1]["label"][59:].any()
    assert len(list(_load(data_dir, train=False, global_batch_size=100)[0])) == 4  # Re-iterable.


def _image_keys(batches):
    return collections.Counter(
        (img.tobytes(), int(lab)) for b in batches for img, lab, m in zip(b["image"], b["label"], b["mask"]) if m
    )


def test_process_shards_are_disjoint_and_cover_the_split(data_dir):
    kw = dict(train=False, normalize="none", image_size=8, global_batch_size=64)
    whole = _image_keys(_load(data_dir, **kw)[0])
    shards = [list(_load(data_dir, process_index=p, process_count=2, **kw)[0]) for p in range(2)]
    assert [len(s) for s in shards] == [6, 6]  # ceil(180 / 32): same step count on every process.
    assert [sum(b["mask"].sum() for b in s) for s in shards] == [180, 179]
    assert _image_keys(shards[0]) + _image_keys(shards[1]) == whole
    assert sum(whole.values()) == 359

    train = [next(_load(data_dir, train=True, process_index=p, process_count=2)[0]) for p in range(2)]
    assert train[0]["image"].shape[0] == 32 and not np.array_equal(train[0]["image"], train[1]["image"])
    with pytest.raises(ConfigError, match="multiple"):
        _load(data_dir, train=True, global_batch_size=63, process_count=2)


def test_multilabel_tiles_match_their_labels(data_dir):
    images, labels = digits.load_digits_uint8()
    tiles = digits.tile_digits(images, labels, np.arange(20), num_examples=50, seed=0)
    assert tiles["image"].shape == (50, 16, 16, 1) and tiles["label"].shape == (50, 10)
    for img, lab, cells, ids in zip(tiles["image"], tiles["label"], tiles["cells"], tiles["ids"]):
        assert 1 <= (ids >= 0).sum() <= 4
        for cell, (cls, src) in enumerate(zip(cells, ids)):
            r, c = divmod(cell, 2)
            patch = img[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
            if src < 0:
                assert cls == -1 and not patch.any()
            else:
                assert cls == labels[src] and np.array_equal(patch, images[src])
        np.testing.assert_array_equal(np.flatnonzero(lab), np.unique(cells[cells >= 0]))

    builder = tfds.builder("vggjax_digits_multilabel", data_dir=data_dir)
    train_idx, test_idx = digits.stratified_split(labels)
    for split, pool in (("train", train_idx), ("test", test_idx)):
        ids = np.concatenate([ex["ids"] for ex in tfds.as_numpy(builder.as_dataset(split=split).take(300))])
        assert np.isin(ids[ids >= 0], pool).all()  # Test images never reuse a train digit.

    it, info = _load(data_dir, "vggjax_digits_multilabel", train=True)
    batch = next(it)
    assert info.multilabel and info.num_classes == 10
    assert batch["image"].shape == (64, 32, 32, 1)
    assert batch["label"].shape == (64, 10) and batch["label"].dtype == np.float32
    assert set(np.unique(batch["label"])) <= {0.0, 1.0} and (batch["label"].sum(1) >= 1).all()


@pytest.mark.parametrize(
    "name, size, label_shape, multilabel",
    [("cifar10", 32, (4,), False), ("voc/2007", 48, (4, 20), True), ("imagenette", 48, (4,), False)],
)
def test_tfds_datasets_with_mock_data(name, size, label_shape, multilabel):
    with tfds.testing.mock_data(num_examples=6):
        it, info = load(name, global_batch_size=4, train=True, image_size=size, process_index=0, process_count=1)
        batch = next(it)
        assert batch["image"].shape == (4, size, size, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == label_shape and info.multilabel == multilabel
        assert np.isfinite(batch["image"]).all()
        evals = list(load(name, global_batch_size=4, train=False, image_size=size, process_index=0, process_count=1)[0])
        assert sum(b["mask"].sum() for b in evals) == 6 and evals[-1]["label"].shape == label_shape
    if multilabel:
        assert set(np.unique(batch["label"])) <= {0.0, 1.0} and info.num_classes == 20


def test_bad_names_and_unprepared_datasets_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="tfds.list_builders") as e:
        load("no_such_dataset", global_batch_size=4, train=True, data_dir=str(tmp_path), process_index=0, process_count=1)
    assert "vggjax_digits" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError) as e:
        load("cifar10", global_batch_size=4, train=True, data_dir=str(tmp_path), process_index=0, process_count=1)
    assert f"tfds build cifar10 --data_dir {tmp_path}" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="downloads/manual"):
        get_info("imagenet2012", str(tmp_path))
    with pytest.raises(DataError, match="configs: .*2007"):
        get_info("voc/2099", str(tmp_path))


def test_bad_options_raise_config_errors(data_dir):
    with pytest.raises(DataError, match="no split 'validation'"):
        _load(data_dir, split="validation", train=True)
    with pytest.raises(ConfigError, match="augment option"):
        _load(data_dir, train=True, augment={"rotate": 10})
    with pytest.raises(ConfigError, match="crop"):
        _load(data_dir, train=True, augment=Augment(crop="zoom"))
    with pytest.raises(ConfigError, match="channels"):
        _load(data_dir, train=True, normalize=((0.5, 0.5), (0.2, 0.2)))
