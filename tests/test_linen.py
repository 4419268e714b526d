"""vggjax.linen: the NNX models inside Linen modules (nnx.bridge.ToLinen): train steps and
pretrained weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import vggjax
import vggjax.linen as vl

OPTS = dict(
    num_classes=8, width=1 / 16, head="fc", head_options={"pool_size": 1, "hidden": 16}, dropout=0.5
)


class Classifier(nn.Module):
    """A small Linen model with a vggjax backbone (in @nn.compact) and a Linen Dense on top."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = vl.vgg11_bn(name="backbone", **OPTS)(x, train=train)
        return nn.Dense(3)(nn.relu(x))


class SetupClassifier(nn.Module):
    def setup(self):
        self.backbone = vl.build("vgg11", num_classes=4, width=1 / 16, head="gap")

    def __call__(self, x):
        return self.backbone(x)


def test_linen_wrapper_trains_one_step():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 3)), jnp.float32)
    y = jnp.arange(8) % 3
    variables = Classifier().init(jax.random.key(0), x)
    params, stats = variables["params"], variables["batch_stats"]
    assert params["backbone"]["features"]["conv1_1"]["kernel"].shape == (3, 3, 3, 4)
    assert stats["backbone"]["features"]["bn1_1"]["mean"].shape == (4,)
    tx = optax.sgd(0.05, momentum=0.9)
    opt = tx.init(params)

    def loss_fn(p, stats, key):
        logits, updates = Classifier().apply(
            {"params": p, "batch_stats": stats},
            x,
            train=True,
            rngs={"dropout": key},
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates[
            "batch_stats"
        ]

    @jax.jit
    def step(p, stats, opt, key):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, stats, key)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), stats, opt, loss, grads

    new, new_stats, opt, loss, grads = step(params, stats, opt, jax.random.key(1))
    assert np.isfinite(float(loss))
    # Gradients reach the vggjax backbone and the step changes its weights and BN statistics.
    g = grads["backbone"]["features"]["conv1_1"]["kernel"]
    assert float(jnp.abs(g).sum()) > 0
    assert not np.array_equal(
        new["backbone"]["features"]["conv1_1"]["kernel"],
        params["backbone"]["features"]["conv1_1"]["kernel"],
    )
    assert not np.array_equal(
        new_stats["backbone"]["features"]["bn1_1"]["mean"],
        stats["backbone"]["features"]["bn1_1"]["mean"],
    )
    # Inference mode is deterministic (no dropout rng needed) and uses the running statistics.
    a = Classifier().apply({"params": new, "batch_stats": new_stats}, x)
    b = Classifier().apply({"params": new, "batch_stats": new_stats}, x)
    np.testing.assert_array_equal(a, b)
    # In setup, too.
    v = SetupClassifier().init(jax.random.key(2), x)
    assert SetupClassifier().apply(v, x).shape == (8, 4)


def test_variables_from_an_nnx_model_give_the_same_outputs():
    model = vggjax.vgg11_bn(rngs=5, **OPTS)
    model.eval()
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    module = vl.vgg11_bn(**OPTS)
    variables = vl.variables_from(model)
    fresh = module.init(jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(fresh)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, x)), np.asarray(model(x)))
    logits, feats = module.apply(variables, x, return_features=True)
    assert feats["relu4_2"].shape == (2, 4, 4, 32) and logits.shape == (2, 8)
