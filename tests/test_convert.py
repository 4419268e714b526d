"""vggjax.convert: torchvision parity (logits and every tap), exact round trips, fc -> fc_conv,
file formats, bad input, and fine-tuning a converted checkpoint through the trainer CLI."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from subproc import ROOT, cpu_env

import vggjax
from vggjax import convert
from vggjax.checkpoint import restore_params_from
from vggjax.errors import CheckpointError, VggjaxError

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

TINY = 1 / 16


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def torch_model(arch: str, seed: int = 0):
    """A randomly initialised torchvision VGG in eval mode, with non-trivial BatchNorm
    statistics."""
    torch.manual_seed(seed)
    m = getattr(torchvision.models, arch)()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


def torch_outputs(model, x_nchw: np.ndarray) -> dict[str, np.ndarray]:
    """Every submodule's output (copied: torchvision's ReLUs work in place)."""
    outs, hooks = {}, []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, name=name: outs.__setitem__(name, o.detach().clone())
                )
            )
    with torch.no_grad():
        outs["logits"] = model(torch.from_numpy(x_nchw))
    for h in hooks:
        h.remove()
    return {k: v.numpy() for k, v in outs.items()}


def nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


# --- parity with real torchvision ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg11", "vgg16_bn", "vgg19"])
def test_torchvision_parity_logits_taps_and_exact_round_trip(arch):
    tm = torch_model(arch)
    model = convert.from_torchvision(tm, arch)
    names = convert.torchvision_module_names(model)
    forward = jax.jit(lambda m, x: m(x, return_features=True))
    rng = np.random.default_rng(0)
    for hw in [(224, 224), (160, 192)]:  # 160x192: 5x6 maps adaptively pooled to 7x7
        x = rng.standard_normal((1, 3, *hw)).astype(np.float32)
        ref = torch_outputs(tm, x)
        logits, feats = forward(model, jnp.asarray(nhwc(x)))
        assert logits.shape == (1, 1000)
        assert rel_diff(logits, ref["logits"]) <= 1e-4, (hw, rel_diff(logits, ref["logits"]))
        checked = 0
        for tap, module in names.items():
            assert tap in feats, tap
            assert feats[tap].shape == nhwc(ref[module]).shape, (tap, module)
            assert rel_diff(feats[tap], nhwc(ref[module])) <= 1e-4, (
                hw,
                tap,
                rel_diff(feats[tap], nhwc(ref[module])),
            )
            checked += 1
        assert checked == len(tm.features) + 1 + len(tm.classifier)  # every torchvision module
    # vggjax -> torchvision is the exact inverse; a fresh torchvision model accepts it.
    back = convert.to_torchvision(model)
    want = tm.state_dict()
    assert list(back) == list(want)
    for k, v in want.items():
        if not k.endswith("num_batches_tracked"):
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    fresh = getattr(torchvision.models, arch)()
    fresh.load_state_dict(back, strict=True)


def tiny_source(num_classes: int = 5, seed: int = 3, arch: str = "vgg11"):
    """A width-1/16 vggjax model with a torchvision-style fc head (7x7 pooling) and its state
    dict."""
    m = vggjax.build(arch, num_classes=num_classes, width=TINY, head="fc", rngs=seed)
    # BatchNorm statistics that are not the 0/1 defaults.
    for path, var in nnx.to_flat_state(nnx.state(m, nnx.BatchStat)):
        var.set_value(
            jax.random.uniform(
                jax.random.key(len(path)), var.get_value().shape, minval=0.5, maxval=1.5
            )
        )
    m.eval()
    return m, convert.to_torchvision(m)


def test_width_reduced_round_trip_and_formats(tmp_path):
    src, sd = tiny_source(arch="vgg11_bn")
    x = jax.random.normal(jax.random.key(0), (2, 64, 80, 3))
    want = np.asarray(src(x))
    torch.save(sd, tmp_path / "w.pth")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file({k: v for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for source in (sd, tmp_path / "w.pth", tmp_path / "w.safetensors"):
        m = convert.from_torchvision(source, "vgg11_bn")
        assert m.num_classes == 5 and m.head.pool_size == 7
        np.testing.assert_array_equal(np.asarray(m(x)), want)
        again = convert.to_torchvision(m)
        for k in sd:
            assert torch.equal(again[k], sd[k]), k


def test_fc_to_fc_conv_port(tmp_path):
    src, sd = tiny_source(num_classes=7)
    dense = convert.to_fc_conv(src)
    assert isinstance(dense.head, vggjax.ConvHead) and dense.head.fc6.kernel.get_value().shape == (
        7,
        7,
        32,
        256,
    )
    x = jax.random.normal(jax.random.key(1), (2, 224, 224, 3))
    a, b = np.asarray(src(x)), np.asarray(dense(x))
    assert rel_diff(b, a) <= 1e-4, rel_diff(b, a)
    big = jax.random.normal(jax.random.key(2), (1, 288, 320, 3))
    score = convert.to_fc_conv(src, return_map=True)(big)
    assert score.shape == (1, 3, 4, 7)  # (288/32-6, 320/32-6) positions of the 7x7 window
    np.testing.assert_allclose(
        np.asarray(dense(big)), np.asarray(score).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
    )
    assert np.asarray(score).std(axis=(1, 2)).min() > 0  # distinct windows, distinct scores
    # The same port through the CLI, read back with convert.load.
    torch.save(sd, tmp_path / "w.pth")
    assert (
        convert.main(
            [
                "--from",
                "torchvision",
                "--arch",
                "vgg11",
                "--input",
                str(tmp_path / "w.pth"),
                "--output",
                str(tmp_path / "dense"),
                "--head",
                "fc_conv",
            ]
        )
        == 0
    )
    loaded = convert.load(tmp_path / "dense")
    assert loaded.head_name == "fc_conv"
    np.testing.assert_array_equal(np.asarray(loaded(big)), np.asarray(dense(big)))


def test_init_from_reads_fc_weights_into_an_fc_conv_head_and_back(tmp_path, caplog):
    from vggjax import train

    src, _ = tiny_source(num_classes=7, arch="vgg11_bn")
    dense = convert.to_fc_conv(src)
    convert.save(src, tmp_path / "fc")
    convert.save(dense, tmp_path / "fc_conv")
    x = jax.random.normal(jax.random.key(1), (2, 224, 224, 3))
    fc6_fc, fc6_conv = "(1568, 256)", "(7, 7, 32, 256)"
    for saved, head, want, reshape in (
        ("fc", "fc_conv", dense(x), f"{fc6_fc} -> model {fc6_conv}"),
        ("fc_conv", "fc", src(x), f"{fc6_conv} -> model {fc6_fc}"),
    ):
        fresh = vggjax.build("vgg11_bn", num_classes=7, width=TINY, head=head, rngs=9)
        _, params, frozen, batch_stats, _ = train.split_model(fresh)
        if head == "fc":  # the trainer's mesh-jit state: replicated over the 8 devices
            replicated = jax.sharding.NamedSharding(
                jax.make_mesh((8,), ("data",)), jax.sharding.PartitionSpec()
            )
            params, batch_stats = jax.device_put((params, batch_stats), replicated)
        with caplog.at_level("INFO", logger="vggjax.checkpoint"):
            loaded, skipped = restore_params_from(
                tmp_path / saved, {"params": params, "frozen": frozen, "batch_stats": batch_stats}
            )
        assert skipped == []  # fc6 / fc7 / fc8 kernels reshaped, nothing left at its fresh init
        assert f"head.fc6.kernel: checkpoint {reshape}" in caplog.text
        kernel = loaded["params"]["head"]["fc6"]["kernel"]
        assert (
            kernel.shape == params["head"]["fc6"]["kernel"].shape
            and kernel.sharding == params["head"]["fc6"]["kernel"].sharding
        )
        nnx.update(fresh, loaded["params"], loaded["batch_stats"])
        fresh.eval()
        assert rel_diff(fresh(x), want) <= 1e-5, (saved, rel_diff(fresh(x), want))


# --- bad input -----------------------------------------------------------------------------


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(VggjaxError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_file_for_another_architecture_names_key_and_shapes():
    _, sd13 = tiny_source(arch="vgg13")
    msg = one_line_error(convert.from_torchvision, sd13, "vgg11")
    assert "features.3.weight" in msg and "(8, 4, 3, 3)" in msg  # what vgg11 expects there
    assert "features.2.weight" in msg and "(4, 4, 3, 3)" in msg  # what the file has there
    assert "use --arch vgg13" in msg
    _, sd = tiny_source()
    bad = dict(sd, **{"features.3.weight": torch.zeros(9, 4, 3, 3)})
    msg = one_line_error(convert.from_torchvision, bad, "vgg11")
    assert "features.3.weight has shape (9, 4, 3, 3) in the file but (8, 4, 3, 3) in vgg11" in msg
    msg = one_line_error(
        convert.from_torchvision, dict(sd, **{"features.99.weight": torch.zeros(2)}), "vgg11"
    )
    assert "unknown key features.99.weight with shape (2,)" in msg
    missing = {k: v for k, v in sd.items() if k != "classifier.3.bias"}
    msg = one_line_error(convert.from_torchvision, missing, "vgg11")
    assert "missing key classifier.3.bias (shape (256,))" in msg
    msg = one_line_error(convert.from_torchvision, {"weight": torch.zeros(3)}, "vgg11")
    assert "missing key features.0.weight" in msg


def test_pickles_that_are_not_plain_state_dicts_are_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    msg = one_line_error(convert.load_torch_state_dict, tmp_path / "module.pth")
    assert "not a plain tensor state dict" in msg and "torch.nn.modules.linear.Linear" in msg
    torch.save({"epoch": 3, "features.0.weight": torch.zeros(1)}, tmp_path / "mixed.pth")
    msg = one_line_error(convert.load_torch_state_dict, tmp_path / "mixed.pth")
    assert "'epoch'" in msg and "not a tensor" in msg
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    assert "cannot read" in one_line_error(convert.load_torch_state_dict, tmp_path / "junk.pth")
    assert "no such file" in one_line_error(convert.load_torch_state_dict, tmp_path / "nope.pth")
    with pytest.raises(CheckpointError):
        convert.from_keras(tmp_path / "junk.pth")
    # The CLI prints one line and no traceback, exit status 2, and writes nothing.
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vggjax.convert",
            "--from",
            "torchvision",
            "--arch",
            "vgg11",
            "--input",
            str(tmp_path / "module.pth"),
            "--output",
            str(tmp_path / "out"),
        ],
        env=cpu_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "not a plain tensor state dict" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# --- fine-tuning a converted checkpoint with the trainer CLI ---------------------------------


@pytest.mark.slow
def test_finetune_converted_checkpoint_with_new_classes(tmp_path):
    src, sd = tiny_source(num_classes=5)
    torch.save(sd, tmp_path / "w.pth")
    out = tmp_path / "converted"
    assert (
        convert.main(
            [
                "--from",
                "torchvision",
                "--arch",
                "vgg11",
                "--input",
                str(tmp_path / "w.pth"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    frozen = ("features/*", "head/fc6/*", "head/fc7/*")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vggjax.train",
            "--config=vggjax/configs/finetune.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.init_from={out}",
            "--config.model=vgg11",
            f"--config.model_options.width={TINY}",
            "--config.model_options.head_options.hidden=256",
            "--config.dataset=vggjax_digits",
            "--config.image_size=32",
            "--config.normalize=default",
            "--config.batch_size=16",
            "--config.num_train_steps=2",
            "--config.optim.schedule=constant",
            "--config.progress=False",
            "--config.compilation_cache=",
            f"--config.freeze={frozen!r}",
        ],
        env=cpu_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # Only the last layer (5 -> 10 classes) starts fresh.
    fresh = [line for line in r.stderr.splitlines() if line.startswith("init_from: kept fresh")]
    assert len(fresh) == 2 and all("head.fc8" in line for line in fresh), r.stderr[-2000:]
    # The run's checkpoint: frozen layers are exactly the converted weights, fc8 has 10 classes.
    model = vggjax.build("vgg11", num_classes=10, width=TINY, head="fc")
    vggjax.freeze(model, list(frozen))
    target = {"frozen": nnx.state(model, vggjax.Frozen), "params": nnx.state(model, nnx.Param)}
    got, skipped = restore_params_from(tmp_path / "run", target)
    assert skipped == []
    nnx.update(model, got["frozen"], got["params"])
    assert model.head.fc8.kernel.get_value().shape == (256, 10)
    for name in ("conv1_1", "conv4_2"):
        np.testing.assert_array_equal(
            getattr(model.features, name).kernel.get_value(),
            getattr(src.features, name).kernel.get_value(),
        )
    np.testing.assert_array_equal(
        model.head.fc6.kernel.get_value(), src.head.fc6.kernel.get_value()
    )
