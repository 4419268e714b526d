"""vggjax.features: taps equal the model's own features, normalisation numbers, perceptual loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vggjax
from vggjax import features
from vggjax.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    m = vggjax.vgg16_bn(num_classes=3, width=1 / 16, head="gap", init="he_normal", rngs=0)
    return m


def test_extract_equals_the_models_features_in_eval_mode(model):
    x = jax.random.uniform(jax.random.key(0), (2, 48, 40, 3))
    model.eval()
    _, feats = model(features.normalize(x, "torch"), return_features=True)
    model.train()  # extract always uses BatchNorm's running statistics
    got = features.extract(model, x, features.PERCEPTUAL_TAPS, normalize_mode="torch")
    assert list(got) == list(features.PERCEPTUAL_TAPS)
    for tap in features.PERCEPTUAL_TAPS:
        np.testing.assert_allclose(
            np.asarray(got[tap]), np.asarray(feats[tap]), rtol=1e-6, atol=1e-6
        )
    assert got["relu4_3"].shape == (2, 6, 5, 32)
    assert features.tap_names(model)[:3] == ["conv1_1", "bn1_1", "relu1_1"]
    with pytest.raises(ConfigError, match="unknown feature tap.*'relu9_9'.*valid: conv1_1"):
        features.extract(model, x, ("relu9_9",))


def test_normalize_numbers():
    x = jnp.array([[[[0.485, 0.456, 0.406], [1.0, 0.0, 0.5]]]])
    t = np.asarray(features.normalize(x, "torch"))
    np.testing.assert_allclose(t[0, 0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(
        t[0, 0, 1], [(1 - 0.485) / 0.229, -0.456 / 0.224, (0.5 - 0.406) / 0.225], rtol=1e-6
    )
    c = np.asarray(features.normalize(x, "caffe"))
    np.testing.assert_allclose(
        c[0, 0, 1], [127.5 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6
    )  # BGR
    assert features.normalize(x, "none") is x
    with pytest.raises(ConfigError):
        features.normalize(x, "tf")


def test_perceptual_loss_values_and_gradients(model):
    k1, k2 = jax.random.split(jax.random.key(1))
    a = jax.random.uniform(k1, (2, 32, 32, 3))
    b = jax.random.uniform(k2, (2, 32, 32, 3))
    assert float(features.perceptual_loss(model, a, a)) == 0.0
    taps = ("relu1_2", "relu3_3")
    fa = features.extract(model, a, taps, normalize_mode="torch")
    fb = features.extract(model, b, taps, normalize_mode="torch")
    want = 2.0 * np.mean(
        (np.asarray(fa["relu1_2"]) - np.asarray(fb["relu1_2"])) ** 2
    ) + 0.5 * np.mean((np.asarray(fa["relu3_3"]) - np.asarray(fb["relu3_3"])) ** 2)
    got = features.perceptual_loss(model, a, b, taps=taps, weights={"relu1_2": 2.0, "relu3_3": 0.5})
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    l1 = features.perceptual_loss(model, a, b, taps=taps, distance="l1")
    assert float(l1) > 0
    styled = features.perceptual_loss(model, a, b, taps=taps, style_weight=10.0)
    assert float(styled) > float(features.perceptual_loss(model, a, b, taps=taps))
    gram = features.gram_matrix(fa["relu1_2"])
    assert gram.shape == (2, 4, 4) and np.allclose(gram, np.swapaxes(gram, 1, 2))
    # Under jit, as in a training step (op by op, the backward pass compiles each op on its
    # own, which is slower).
    ga, gb = jax.jit(jax.grad(lambda x, y: features.perceptual_loss(model, x, y), argnums=(0, 1)))(
        a, b
    )
    assert np.isfinite(np.asarray(ga)).all() and float(jnp.abs(ga).sum()) > 0
    assert float(jnp.abs(gb).sum()) == 0.0  # targets are constants
    # One gradient step on the image lowers the loss.
    loss0 = features.perceptual_loss(model, a, b)
    lr = 0.1 / float(jnp.abs(ga).max())
    assert float(features.perceptual_loss(model, a - lr * ga, b)) < float(loss0)
