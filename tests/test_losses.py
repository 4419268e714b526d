"""Losses and metrics: values against real PyTorch / scikit-learn, masks, registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vggjax import losses
from vggjax.errors import ConfigError, ShapeError


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ cross-entropy


@pytest.mark.slow
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch_2d(smoothing):
    torch = pytest.importorskip("torch")
    r = _rng(1)
    logits = r.normal(size=(16, 5)).astype(np.float32) * 3
    labels = r.integers(0, 5, size=16)
    ours = losses.softmax_cross_entropy(logits, labels, label_smoothing=smoothing)
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=smoothing
    )
    np.testing.assert_allclose(float(ours), ref.item(), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_cross_entropy_per_pixel_matches_torch_nchw():
    torch = pytest.importorskip("torch")
    r = _rng(2)
    logits_nhwc = r.normal(size=(2, 4, 5, 3)).astype(np.float32) * 2
    labels = r.integers(0, 3, size=(2, 4, 5))
    ours = losses.softmax_cross_entropy(logits_nhwc, labels)
    nchw = torch.from_numpy(np.ascontiguousarray(logits_nhwc.transpose(0, 3, 1, 2)))
    ref = torch.nn.functional.cross_entropy(nchw, torch.from_numpy(labels))
    np.testing.assert_allclose(float(ours), ref.item(), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_cross_entropy_mask_matches_torch_ignore_index():
    torch = pytest.importorskip("torch")
    r = _rng(3)
    logits = r.normal(size=(3, 4, 4, 6)).astype(np.float32)
    labels = r.integers(0, 6, size=(3, 4, 4))
    mask = r.random(size=(3, 4, 4)) > 0.3
    ours = losses.softmax_cross_entropy(logits, labels, mask=mask)
    torch_labels = np.where(mask, labels, -100)
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(np.ascontiguousarray(logits.transpose(0, 3, 1, 2))),
        torch.from_numpy(torch_labels),
    )
    np.testing.assert_allclose(float(ours), ref.item(), rtol=1e-6, atol=1e-6)


def test_cross_entropy_uniform_logits_is_log_c_and_jits():
    logits = jnp.zeros((4, 3))
    labels = jnp.array([0, 1, 2, 0])
    value = jax.jit(losses.softmax_cross_entropy)(logits, labels)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), math.log(3), rtol=1e-6)
    bf16 = losses.softmax_cross_entropy(logits.astype(jnp.bfloat16), labels)
    assert bf16.dtype == jnp.float32


def test_per_example_mask_broadcasts_over_pixels_and_empty_mask_is_zero():
    r = _rng(4)
    logits = jnp.asarray(r.normal(size=(2, 3, 3, 4)), jnp.float32)
    labels = jnp.asarray(r.integers(0, 4, size=(2, 3, 3)))
    first_only = losses.softmax_cross_entropy(logits, labels, mask=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(
        float(first_only), float(losses.softmax_cross_entropy(logits[:1], labels[:1])), rtol=1e-6
    )
    assert float(losses.softmax_cross_entropy(logits, labels, mask=jnp.zeros(2))) == 0.0


def test_cross_entropy_shape_errors():
    with pytest.raises(ShapeError, match="channels-last"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3, 4, 4)), jnp.zeros((2, 4, 4), jnp.int32))
    with pytest.raises(ShapeError, match="integer"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,)))


# -------------------------------------------------------------- multilabel loss


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 50.0, 1e4])
def test_multilabel_soft_margin_matches_torch(scale):
    torch = pytest.importorskip("torch")
    r = _rng(5)
    logits = (r.normal(size=(8, 20)) * scale).astype(np.float32)
    targets = (r.random(size=(8, 20)) > 0.7).astype(np.float32)
    ours = losses.multilabel_soft_margin(logits, targets)
    ref = torch.nn.functional.multilabel_soft_margin_loss(
        torch.from_numpy(logits), torch.from_numpy(targets)
    )
    assert np.isfinite(float(ours))
    np.testing.assert_allclose(float(ours), ref.item(), rtol=1e-6, atol=1e-6)


def test_multilabel_soft_margin_zero_logits_is_ln2_and_large_logits_finite():
    targets = jnp.asarray(_rng(6).random(size=(4, 20)) > 0.5, jnp.float32)
    np.testing.assert_allclose(
        float(losses.multilabel_soft_margin(jnp.zeros((4, 20)), targets)), math.log(2), rtol=1e-6
    )
    # Confidently wrong by 1e5: loss is 1e5 per wrong class, not inf/NaN.
    wrong = jnp.where(targets > 0, -1e5, 1e5)
    np.testing.assert_allclose(float(losses.multilabel_soft_margin(wrong, targets)), 1e5, rtol=1e-6)
    grads = jax.grad(losses.multilabel_soft_margin)(wrong, targets)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_multilabel_mask_selects_examples():
    r = _rng(7)
    logits = jnp.asarray(r.normal(size=(3, 5)), jnp.float32)
    targets = jnp.asarray(r.random(size=(3, 5)) > 0.5, jnp.float32)
    masked = losses.multilabel_soft_margin(logits, targets, mask=jnp.array([0, 1, 1]))
    np.testing.assert_allclose(
        float(masked), float(losses.multilabel_soft_margin(logits[1:], targets[1:])), rtol=1e-6
    )
    with pytest.raises(ShapeError):
        losses.multilabel_soft_margin(logits, targets[:, :4])


# -------------------------------------------------------------------- l2 penalty


def test_l2_penalty_dict_and_nnx_state():
    params = {"w": jnp.array([[1.0, 2.0], [3.0, 0.0]]), "b": {"bias": jnp.array([1.0, -1.0])}}
    np.testing.assert_allclose(float(losses.l2_penalty(params, 0.001)), 0.001 * 16, rtol=1e-6)
    np.testing.assert_allclose(
        float(losses.l2_penalty(params, 0.5, mask="no_bias_norm")), 0.5 * 14, rtol=1e-6
    )

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(3, 2, rngs=rngs)
            self.bn = nnx.BatchNorm(2, rngs=rngs)

    _, state, _ = nnx.split(Tiny(nnx.Rngs(0)), nnx.Param, ...)
    kernel = state["fc"]["kernel"][...]
    expected_all = float(jnp.sum(kernel**2)) + 2.0  # bn scale = ones(2); biases are zero
    np.testing.assert_allclose(float(losses.l2_penalty(state, 1.0)), expected_all, rtol=1e-6)
    np.testing.assert_allclose(
        float(losses.l2_penalty(state, 1.0, mask="no_bias_norm")),
        float(jnp.sum(kernel**2)),
        rtol=1e-6,
    )


# ----------------------------------------------------------------------- metrics


def test_accuracy_top1_topk_and_per_pixel():
    logits = jnp.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = jnp.array([1, 2, 2, 1])
    np.testing.assert_allclose(float(losses.accuracy(logits, labels)), 0.5)
    np.testing.assert_allclose(float(losses.accuracy(logits, labels, k=2)), 1.0)
    np.testing.assert_allclose(float(losses.accuracy(logits, labels, mask=[1, 0, 1, 0])), 1.0)
    pix = jnp.zeros((2, 2, 2, 3)).at[..., 2].set(1.0)
    np.testing.assert_allclose(float(losses.accuracy(pix, jnp.full((2, 2, 2), 2))), 1.0)


def test_multilabel_accuracy():
    logits = jnp.array([[2.0, -1.0], [-3.0, -0.5]])
    targets = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(float(losses.multilabel_accuracy(logits, targets)), 0.75)


def test_mean_average_precision_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    r = _rng(8)
    scores = np.round(r.normal(size=(40, 6)), 1).astype(np.float32)  # rounding makes ties
    targets = (r.random(size=(40, 6)) > 0.6).astype(np.float32)
    targets[:, 5] = 0  # a class with no positive is left out of the mean
    expected = np.mean(
        [metrics.average_precision_score(targets[:, c], scores[:, c]) for c in range(5)]
    )
    ours = jax.jit(losses.mean_average_precision)(scores, targets)
    np.testing.assert_allclose(float(ours), expected, rtol=1e-5)
    keep = r.random(size=40) > 0.3
    expected_masked = np.mean(
        [
            metrics.average_precision_score(targets[keep, c], scores[keep, c])
            for c in range(5)
            if targets[keep, c].any()
        ]
    )
    masked = losses.mean_average_precision(scores, targets, mask=keep)
    np.testing.assert_allclose(float(masked), expected_masked, rtol=1e-5)


# ---------------------------------------------------------------------- registry


def test_get_loss_registry():
    assert losses.get_loss("softmax_cross_entropy") is losses.softmax_cross_entropy
    assert losses.get_loss("multilabel_soft_margin") is losses.multilabel_soft_margin
    with pytest.raises(ConfigError, match="multilabel_soft_margin, softmax_cross_entropy") as e:
        losses.get_loss("cross_entropy")
    assert "\n" not in str(e.value)
