"""Input pipeline: embedded digits builders, determinism, resume, sharding, padding, errors."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vggjax.data import Augment, digits, get_datasets, get_info, load
from vggjax.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One offline build of the embedded datasets for the whole module."""
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
    ids = {
        s: {int(ex["id"]) for ex in tfds.as_numpy(builder.as_dataset(split=s))}
        for s in ("train", "test")
    }
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
    resumed = _take(
        _load(data_dir, train=True, seed=3, global_batch_size=256, start_step=start_step)[0],
        8 - start_step,
    )
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
        (img.tobytes(), int(lab))
        for b in batches
        for img, lab, m in zip(b["image"], b["label"], b["mask"])
        if m
    )


def test_process_shards_are_disjoint_and_cover_the_split(data_dir):
    kw = dict(train=False, normalize="none", image_size=8, global_batch_size=64)
    whole = _image_keys(_load(data_dir, **kw)[0])
    shards = [list(_load(data_dir, process_index=p, process_count=2, **kw)[0]) for p in range(2)]
    assert [len(s) for s in shards] == [6, 6]  # ceil(180 / 32): same step count on every process.
    assert [sum(b["mask"].sum() for b in s) for s in shards] == [180, 179]
    assert _image_keys(shards[0]) + _image_keys(shards[1]) == whole
    assert sum(whole.values()) == 359

    train = [
        next(_load(data_dir, train=True, process_index=p, process_count=2)[0]) for p in range(2)
    ]
    assert train[0]["image"].shape[0] == 32 and not np.array_equal(
        train[0]["image"], train[1]["image"]
    )
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
        ids = np.concatenate(
            [ex["ids"] for ex in tfds.as_numpy(builder.as_dataset(split=split).take(300))]
        )
        assert np.isin(ids[ids >= 0], pool).all()  # Test images never reuse a train digit.

    it, info = _load(data_dir, "vggjax_digits_multilabel", train=True)
    batch = next(it)
    assert info.multilabel and info.num_classes == 10
    assert batch["image"].shape == (64, 32, 32, 1)
    assert batch["label"].shape == (64, 10) and batch["label"].dtype == np.float32
    assert set(np.unique(batch["label"])) <= {0.0, 1.0} and (batch["label"].sum(1) >= 1).all()


@pytest.mark.parametrize(
    "name, size, label_shape, multilabel",
    [
        ("cifar10", 32, (4,), False),
        ("voc/2007", 48, (4, 20), True),
        ("imagenette", 48, (4,), False),
    ],
)
def test_tfds_datasets_with_mock_data(name, size, label_shape, multilabel):
    with tfds.testing.mock_data(num_examples=6):
        it, info = load(
            name, global_batch_size=4, train=True, image_size=size, process_index=0, process_count=1
        )
        batch = next(it)
        assert batch["image"].shape == (4, size, size, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == label_shape and info.multilabel == multilabel
        assert np.isfinite(batch["image"]).all()
        evals = list(
            load(
                name,
                global_batch_size=4,
                train=False,
                image_size=size,
                process_index=0,
                process_count=1,
            )[0]
        )
        assert sum(b["mask"].sum() for b in evals) == 6 and evals[-1]["label"].shape == label_shape
    if multilabel:
        assert set(np.unique(batch["label"])) <= {0.0, 1.0} and info.num_classes == 20


def test_bad_names_and_unprepared_datasets_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="tfds.list_builders") as e:
        load(
            "no_such_dataset",
            global_batch_size=4,
            train=True,
            data_dir=str(tmp_path),
            process_index=0,
            process_count=1,
        )
    assert "vggjax_digits" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError) as e:
        load(
            "cifar10",
            global_batch_size=4,
            train=True,
            data_dir=str(tmp_path),
            process_index=0,
            process_count=1,
        )
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


# --- class subsets (classes=...) -----------------------------------------------------------


def _masked(batches):
    """(images, labels) of the real (mask=True) rows of eval batches, in order."""
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    return images, labels


def test_classes_subset_is_the_filtered_stream_relabelled(data_dir):
    kw = dict(train=False, normalize="none", image_size=8, global_batch_size=32)
    all_images, all_labels = _masked(list(_load(data_dir, **kw)[0]))
    batches, info = _load(data_dir, classes=(8, 3), **kw)  # The order given is the new label order.
    batches = list(batches)
    images, labels = _masked(batches)
    keep = np.isin(all_labels, (8, 3))
    assert keep.sum() == 72 and len(batches) == 3  # ceil(72 / 32) eval steps, the last padded.
    np.testing.assert_array_equal(images, all_images[keep])
    np.testing.assert_array_equal(labels, np.where(all_labels[keep] == 8, 0, 1))
    assert labels.dtype == np.int32 and not batches[-1]["mask"][72 - 64 :].any()
    assert (info.num_classes, info.class_names, info.classes, info.multilabel) == (
        2,
        ("8", "3"),
        (8, 3),
        False,
    )
    assert (info.num_train_examples, info.num_test_examples) == (285, 72)

    # The same examples as the prebuilt 3-vs-8 dataset (same split; 3 -> 0, 8 -> 1).
    assert _image_keys(_load(data_dir, classes=(3, 8), **kw)[0]) == _image_keys(
        _load(data_dir, "vggjax_digits2", **kw)[0]
    )
    ours, ref = (
        get_info("vggjax_digits", data_dir, classes=["3", "8"]),
        get_info("vggjax_digits2", data_dir),
    )  # Names work too.
    assert (
        ours.num_classes,
        ours.class_names,
        ours.num_train_examples,
        ours.num_test_examples,
        ours.classes,
    ) == (ref.num_classes, ref.class_names, ref.num_train_examples, ref.num_test_examples, (3, 8))
    assert get_info("vggjax_digits", data_dir).classes is None


def test_classes_subset_counts_are_read_once_per_split(data_dir, monkeypatch):
    from vggjax.data import pipeline

    first = get_info("vggjax_digits", data_dir, classes=(1, 7))
    opened = []
    monkeypatch.setattr(pipeline, "_open", lambda *args, **kw: opened.append(args[2]))
    again = get_info(
        "vggjax_digits", data_dir, classes=(0, 4, 1)
    )  # Other classes, same label histograms.
    assert not opened  # Served from the in-process cache: no split was read again.
    _, labels = digits.load_digits_uint8()
    expected = np.bincount(labels, minlength=10)
    assert first.num_train_examples + first.num_test_examples == expected[[1, 7]].sum()
    assert again.num_train_examples + again.num_test_examples == expected[[0, 4, 1]].sum()


@pytest.mark.parametrize(
    "start_step", [4, 5]
)  # 285 kept / 64 = 4.45 batches an epoch: 4 straddles, 5 is past.
def test_classes_subset_trains_on_kept_classes_and_resumes_exactly(data_dir, start_step):
    kw = dict(train=True, seed=5, classes=(3, 8), image_size=8)
    fresh = _take(_load(data_dir, **kw)[0], 7)
    resumed = _take(_load(data_dir, start_step=start_step, **kw)[0], 7 - start_step)
    for x, y in zip(fresh[start_step:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    labels = np.concatenate([b["label"] for b in fresh])
    assert set(np.unique(labels)) == {0, 1} and labels.dtype == np.int32
    # One epoch (the first 285 examples) holds each kept train example exactly once.
    ref = _load(data_dir, "vggjax_digits2", train=False, global_batch_size=285, split="train")[0]
    ref_labels = np.concatenate([b["label"][b["mask"]] for b in ref])
    np.testing.assert_array_equal(
        np.bincount(labels[:285], minlength=2), np.bincount(ref_labels, minlength=2)
    )


def test_classes_subset_eval_shards_cover_the_kept_examples_once(data_dir):
    kw = dict(train=False, normalize="none", image_size=8, global_batch_size=32, classes=(3, 8))
    whole = _image_keys(_load(data_dir, **kw)[0])
    shards = [list(_load(data_dir, process_index=p, process_count=2, **kw)[0]) for p in range(2)]
    assert (
        len(shards[0]) == len(shards[1]) == 3
    )  # Both pad to the larger kept shard (3 steps of 16).
    assert _image_keys(shards[0]) + _image_keys(shards[1]) == whole and sum(whole.values()) == 72
    train = [
        next(_load(data_dir, train=True, classes=(3, 8), process_index=p, process_count=2)[0])
        for p in range(2)
    ]
    assert all(set(np.unique(b["label"])) <= {0, 1} for b in train)


def test_classes_subset_with_mock_cifar10():
    common = dict(image_size=32, process_index=0, process_count=1, normalize="none")
    with tfds.testing.mock_data(num_examples=200):
        full, full_info = load("cifar10", global_batch_size=64, train=False, **common)
        all_images, all_labels = _masked(list(full))
        keep = np.isin(all_labels, (0, 2))
        n = int(keep.sum())
        assert 0 < n < 200  # Mock labels are uniform in 0..9.

        batches, info = load("cifar10", global_batch_size=64, train=False, classes=(0, 2), **common)
        batches = list(batches)
        images, labels = _masked(batches)
        assert len(batches) == -(-n // 64) and sum(b["mask"].sum() for b in batches) == n
        np.testing.assert_array_equal(images, all_images[keep])
        np.testing.assert_array_equal(labels, np.where(all_labels[keep] == 0, 0, 1))
        names = (
            full_info.class_names
        )  # ("airplane", …) for the real data; mock metadata may say ("0", …).
        assert (info.num_classes, info.class_names, info.classes) == (
            2,
            (names[0], names[2]),
            (0, 2),
        )
        assert (
            info.num_train_examples == info.num_test_examples == n
        )  # Mock splits are the same 200 examples.

        train_it, evals, info2 = get_datasets(
            "cifar10", global_batch_size=8, classes=(0, 2), augment="none", **common
        )
        fresh = _take(train_it, 4)
        assert info2 == info and set(np.unique(np.concatenate([b["label"] for b in fresh]))) <= {
            0,
            1,
        }
        assert sum(b["mask"].sum() for b in evals) == n
        step = n // 8  # The first batch after the first epoch boundary (or straddling it).
        a = _take(
            load("cifar10", global_batch_size=8, train=True, classes=(0, 2), **common)[0], step + 2
        )
        b = _take(
            load(
                "cifar10",
                global_batch_size=8,
                train=True,
                classes=(0, 2),
                start_step=step,
                **common,
            )[0],
            2,
        )
        for x, y in zip(a[step:], b):
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["label"], y["label"])


def test_bad_classes_raise_one_line_config_errors(data_dir):
    cases = [
        ("vggjax_digits_multilabel", (0, 1), "multi-label"),
        ("vggjax_digits", (3, 10), r"class id 10 is out of range .*0\.\.9 \(0 0, 1 1, .*9 9\)"),
        ("vggjax_digits", (-1,), "out of range"),
        ("vggjax_digits", (3, 8, 3), "class 3 more than once"),
        ("vggjax_digits", (), "empty"),
        ("vggjax_digits", 3, "sequence of class ids"),
        ("vggjax_digits", "38", "sequence of class ids"),
        ("vggjax_digits", ("three",), "ids or names"),
        ("vggjax_digits", (True, 2), "ids or names"),
    ]
    for name, classes, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            _load(data_dir, name, train=True, classes=classes)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="out of range"):
        get_info("vggjax_digits", data_dir, classes=(12,))
    info = get_info("vggjax_digits", data_dir, classes=(7,))  # One class is allowed.
    assert info.num_classes == 1 and info.class_names == ("7",)


def test_embedded_build_says_what_it_builds_not_that_it_downloads(tmp_path, capfd):
    get_info("vggjax_digits2", str(tmp_path))
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err and "download" not in out + err
    builder = tfds.builder("vggjax_digits2", data_dir=str(tmp_path))
    assert out.strip().splitlines() == [
        f"building vggjax_digits2 from scikit-learn's bundled digits into {builder.data_dir}"
    ]
    get_info("vggjax_digits2", str(tmp_path))  # built: nothing more to say
    assert capfd.readouterr().out == ""
