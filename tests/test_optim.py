"""Optimiser builders: torch SGD parity, coupled/decoupled decay, masks, schedules, plateau."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vggjax import losses, optim
from vggjax.errors import ConfigError


def _params(seed=0):
    r = np.random.default_rng(seed)
    return {
        "fc": {
            "kernel": jnp.asarray(r.normal(size=(3, 4)), jnp.float32),
            "bias": jnp.asarray(r.normal(size=(4,)), jnp.float32),
        }
    }


def _data(seed=1):
    r = np.random.default_rng(seed)
    return jnp.asarray(r.normal(size=(8, 3)), jnp.float32), jnp.asarray(
        r.normal(size=(8, 4)), jnp.float32
    )


def _mse(params, x, y):
    pred = x @ params["fc"]["kernel"] + params["fc"]["bias"]
    return jnp.mean((pred - y) ** 2)


def _run(tx, params, grad_fn, steps):
    opt_state = tx.init(params)
    for _ in range(steps):
        grads = grad_fn(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, opt_state


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(4, 2, rngs=rngs)


def _nnx_params():
    model = Tiny(nnx.Rngs(0))
    # Non-zero biases so that "unchanged" is a real check.
    model.conv.bias[...] = jnp.full((4,), 0.5)
    model.fc.bias[...] = jnp.full((2,), -0.25)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    return params


# ------------------------------------------------------------ weight decay = L2


@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_weight_decay_equals_book_l2_penalty(nesterov):
    lam = 1e-3
    x, y = _data()
    base = {"learning_rate": 0.05, "momentum": 0.9, "nesterov": nesterov}
    with_penalty = jax.grad(lambda p: _mse(p, x, y) + losses.l2_penalty(p, lam))
    plain = jax.grad(lambda p: _mse(p, x, y))
    tx_loss = optim.make_optimizer(base, steps_per_epoch=1, total_steps=6)
    tx_wd = optim.make_optimizer({**base, "weight_decay": 2 * lam}, 1, 6)
    p0 = _params()
    pa, pb = p0, p0
    sa, sb = tx_loss.init(p0), tx_wd.init(p0)
    for _ in range(6):  # step by step, so a drift would show at the step it starts
        ua, sa = tx_loss.update(with_penalty(pa), sa, pa)
        ub, sb = tx_wd.update(plain(pb), sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), pa, pb)
    assert not np.allclose(pa["fc"]["kernel"], p0["fc"]["kernel"])


@pytest.mark.slow
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch(nesterov):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(3)
    p0 = _params()
    grads_seq = [
        {
            "fc": {
                "kernel": r.normal(size=(3, 4)).astype(np.float32),
                "bias": r.normal(size=(4,)).astype(np.float32),
            }
        }
        for _ in range(6)
    ]
    cfg = {"learning_rate": 0.1, "momentum": 0.9, "nesterov": nesterov, "weight_decay": 5e-4}
    tx = optim.make_optimizer(cfg, steps_per_epoch=10, total_steps=60)
    it = iter(grads_seq)
    ours, _ = _run(tx, p0, lambda p: jax.tree.map(jnp.asarray, next(it)), len(grads_seq))

    tk = torch.tensor(np.asarray(p0["fc"]["kernel"]), requires_grad=True)
    tb = torch.tensor(np.asarray(p0["fc"]["bias"]), requires_grad=True)
    opt = torch.optim.SGD([tk, tb], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    for g in grads_seq:
        tk.grad = torch.from_numpy(g["fc"]["kernel"])
        tb.grad = torch.from_numpy(g["fc"]["bias"])
        opt.step()
    np.testing.assert_allclose(ours["fc"]["kernel"], tk.detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours["fc"]["bias"], tb.detach().numpy(), rtol=0, atol=1e-6)


def test_plain_sgd_without_momentum_has_no_buffer():
    tx = optim.make_optimizer({"learning_rate": 0.5}, 1, 1)
    p = {"w": jnp.ones(3)}
    new, state = _run(tx, p, lambda p: {"w": jnp.full(3, 2.0)}, 1)
    np.testing.assert_allclose(new["w"], 0.0)
    assert all(leaf.ndim == 0 for leaf in jax.tree.leaves(state))  # only scalars: no trace


# ------------------------------------------------------- decoupled decay, masks


def test_decoupled_decay_skips_momentum_buffer():
    lr, wd, mu, k = 0.1, 0.2, 0.9, 5
    w0 = jnp.array([1.0, -2.0, 3.0])
    zero = lambda p: {"w": jnp.zeros(3)}  # noqa: E731
    base = {"learning_rate": lr, "momentum": mu, "weight_decay": wd}
    decoupled = {**base, "weight_decay_mode": "decoupled"}
    dec, _ = _run(optim.make_optimizer(decoupled, 1, k), {"w": w0}, zero, k)
    cou, _ = _run(optim.make_optimizer(base, 1, k), {"w": w0}, zero, k)
    # Decoupled: w ← w − lr·wd·w each step, momentum never sees the decay.
    np.testing.assert_allclose(dec["w"], w0 * (1 - lr * wd) ** k, rtol=1e-6)
    # Coupled: wd·w goes through the momentum buffer (torch SGD), so it shrinks faster.
    w, buf = np.asarray(w0), np.zeros(3)
    for _ in range(k):
        buf = mu * buf + wd * w
        w = w - lr * buf
    np.testing.assert_allclose(cou["w"], w, rtol=1e-6)
    assert np.all(np.abs(cou["w"]) < np.abs(dec["w"]))

    # With a gradient the decoupled step is w ← w − lr·(m + wd·w).
    g = jnp.array([0.5, 0.5, -1.0])
    one, _ = _run(optim.make_optimizer(decoupled, 1, 1), {"w": w0}, lambda p: {"w": g}, 1)
    np.testing.assert_allclose(one["w"], w0 - lr * (g + wd * w0), rtol=1e-6)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_no_bias_norm_mask_on_nnx_state(mode):
    params = _nnx_params()
    cfg = {
        "learning_rate": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.5,
        "weight_decay_mode": mode,
        "weight_decay_mask": "no_bias_norm",
    }
    tx = optim.make_optimizer(cfg, 1, 3)
    new, _ = _run(tx, params, lambda p: jax.tree.map(jnp.zeros_like, p), 3)
    assert type(new) is type(params)
    for path in [("conv", "bias"), ("fc", "bias"), ("bn", "bias"), ("bn", "scale")]:
        np.testing.assert_array_equal(new[path[0]][path[1]][...], params[path[0]][path[1]][...])
    for layer in ("conv", "fc"):
        before, after = params[layer]["kernel"][...], new[layer]["kernel"][...]
        assert np.all(np.abs(after) < np.abs(before) + 1e-12)
        assert not np.allclose(after, before)

    mask = optim.decay_mask(params, "no_bias_norm")
    flat = {
        optim.leaf_name(p) + "@" + jax.tree_util.keystr(p[:1]): bool(v)
        for p, v in jax.tree_util.tree_leaves_with_path(mask)
    }
    assert flat == {
        "bias@['bn']": False,
        "scale@['bn']": False,
        "bias@['conv']": False,
        "kernel@['conv']": True,
        "bias@['fc']": False,
        "kernel@['fc']": True,
    }


def test_all_mask_decays_biases_too():
    params = _nnx_params()
    tx = optim.make_optimizer({"learning_rate": 0.1, "weight_decay": 0.5}, 1, 1)
    new, _ = _run(tx, params, lambda p: jax.tree.map(jnp.zeros_like, p), 1)
    np.testing.assert_allclose(new["conv"]["bias"][...], 0.5 * (1 - 0.05), rtol=1e-6)


def test_optimizer_under_jit_with_nnx_state():
    params = _nnx_params()
    tx = optim.make_optimizer(
        {
            "learning_rate": 0.1,
            "momentum": 0.9,
            "weight_decay": 1e-3,
            "weight_decay_mask": "no_bias_norm",
            "grad_clip_norm": 1.0,
        },
        1,
        5,
    )

    @jax.jit
    def step(params, opt_state):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, optim.current_lr(opt_state)

    opt_state = tx.init(params)
    for _ in range(2):
        params, opt_state, lr = step(params, opt_state)
    np.testing.assert_allclose(float(lr), 0.1, rtol=1e-6)


# ---------------------------------------------------------------------- clipping


def test_grad_clip_caps_global_norm():
    p = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    big = {"a": jnp.array([3.0, 4.0, 0.0]), "b": jnp.full((2, 2), 6.0)}  # norm 13
    tx = optim.make_optimizer({"learning_rate": 1.0, "grad_clip_norm": 2.0}, 1, 1)
    updates, _ = tx.update(big, tx.init(p), p)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 2.0, rtol=1e-6)
    np.testing.assert_allclose(updates["a"], -np.array([3.0, 4.0, 0.0]) * 2 / 13, rtol=1e-6)
    small = jax.tree.map(lambda g: g / 100, big)  # norm 0.13: untouched
    updates, _ = tx.update(small, tx.init(p), p)
    jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -g, rtol=1e-6), updates, small)
    for off in (0.0, None):
        tx = optim.make_optimizer({"learning_rate": 1.0, "grad_clip_norm": off}, 1, 1)
        updates, _ = tx.update(big, tx.init(p), p)
        np.testing.assert_allclose(float(optax.tree.norm(updates)), 13.0, rtol=1e-6)


# --------------------------------------------------------------------- schedules


def _lrs(cfg, steps, spe, total):
    sched = optim.make_schedule(cfg, spe, total)
    return [float(sched(s)) for s in steps]


def test_piecewise_schedule_in_epochs_and_steps():
    cfg = {"learning_rate": 1.0, "schedule": "piecewise", "lr_boundaries": (2, 4)}
    np.testing.assert_allclose(
        _lrs(cfg, [0, 19, 20, 39, 40, 99], 10, 100), [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6
    )
    cfg = {**cfg, "lr_boundaries": (5,), "lr_boundaries_unit": "steps", "lr_decay_factor": 0.5}
    np.testing.assert_allclose(_lrs(cfg, [4, 5, 50], 10, 100), [1, 0.5, 0.5], rtol=1e-6)


def test_step_schedule_like_torch_steplr():
    cfg = {"learning_rate": 0.2, "schedule": "step", "lr_step_every": 3}
    np.testing.assert_allclose(
        _lrs(cfg, [0, 5, 6, 11, 12], 2, 100), [0.2, 0.2, 0.02, 0.02, 0.002], rtol=1e-6
    )


def test_warmup_cosine_endpoints():
    cfg = {
        "learning_rate": 0.4,
        "schedule": "warmup_cosine",
        "warmup_epochs": 1,
        "end_learning_rate": 0.002,
    }
    got = _lrs(cfg, [0, 5, 10, 55, 100, 200], 10, 100)
    np.testing.assert_allclose(got, [0.0, 0.2, 0.4, 0.201, 0.002, 0.002], rtol=1e-5, atol=1e-7)
    no_warmup = _lrs({**cfg, "warmup_epochs": 0}, [0, 100], 10, 100)
    np.testing.assert_allclose(no_warmup, [0.4, 0.002], rtol=1e-6)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        optim.make_schedule({**cfg, "warmup_epochs": 10}, 10, 100)


def test_warmup_multiplies_other_schedules():
    cfg = {"learning_rate": 1.0, "schedule": "piecewise", "lr_boundaries": (3,), "warmup_epochs": 1}
    np.testing.assert_allclose(_lrs(cfg, [0, 2, 4, 11, 12], 4, 100), [0, 0.5, 1, 1, 0.1], rtol=1e-6)


def test_current_lr_follows_schedule_through_updates():
    cfg = {
        "learning_rate": 1.0,
        "schedule": "piecewise",
        "lr_boundaries": (2,),
        "lr_boundaries_unit": "steps",
        "momentum": 0.9,
    }
    tx = optim.make_optimizer(cfg, 1, 10)
    p = {"w": jnp.zeros(2)}
    state = tx.init(p)
    assert float(optim.current_lr(state)) == 1.0
    seen = []
    for _ in range(4):
        u, state = tx.update({"w": jnp.ones(2)}, state, p)
        seen.append(float(optim.current_lr(state)))
    np.testing.assert_allclose(seen, [1.0, 1.0, 0.1, 0.1], rtol=1e-6)


# ----------------------------------------------------------------------- plateau


PLATEAU = {"learning_rate": 0.1, "schedule": "plateau", "plateau_patience": 2, "momentum": 0.9}


def _one_update(tx, state, p):
    _, state = tx.update({"w": jnp.ones(2)}, state, p)
    return state


def test_plateau_divides_lr_by_ten_after_patience_and_is_checkpointable():
    tx = optim.make_optimizer(PLATEAU, 10, 100)
    p = {"w": jnp.zeros(2)}
    state = tx.init(p)
    scales = []
    for metric in [0.5, 0.5, 0.5, 0.5]:  # 1st sets the best, then 3 without improvement
        state = optim.plateau_update(state, metric, PLATEAU)
        scales.append(float(optim.plateau_scale(state)))
    # patience=2 tolerates two bad evaluations; the third one reduces (torch semantics).
    np.testing.assert_allclose(scales, [1, 1, 1, 0.1], rtol=1e-6)
    state = _one_update(tx, state, p)
    np.testing.assert_allclose(float(optim.current_lr(state)), 0.01, rtol=1e-6)
    state = optim.plateau_update(state, 0.9, PLATEAU)  # improvement resets the count
    assert int(optim._find_lr_state(state).plateau.num_bad) == 0

    # Checkpointable: every leaf is an array; a numpy round trip (what a checkpoint does)
    # continues exactly as the original.
    leaves = jax.tree.leaves(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)
    for metric in [0.1, 0.1, 0.1]:
        state = optim.plateau_update(state, metric, PLATEAU)
        restored = optim.plateau_update(restored, metric, PLATEAU)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state, restored)
    np.testing.assert_allclose(float(optim.plateau_scale(state)), 0.01, rtol=1e-6)


def test_plateau_update_jits_and_is_noop_for_other_schedules():
    tx = optim.make_optimizer(PLATEAU, 10, 100)
    state = tx.init({"w": jnp.zeros(2)})
    update = jax.jit(functools.partial(optim.plateau_update, cfg=PLATEAU))
    eager = state
    for metric in [0.3, 0.2, 0.2, 0.25]:
        state = update(state, jnp.float32(metric))
        eager = optim.plateau_update(eager, metric, PLATEAU)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state, eager)
    np.testing.assert_allclose(float(optim.plateau_scale(state)), 0.1, rtol=1e-6)

    constant = {"learning_rate": 0.1}
    other = optim.make_optimizer(constant, 10, 100).init({"w": jnp.zeros(2)})
    assert optim.plateau_update(other, 0.0, constant) is other


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_matches_torch_reduce_lr_on_plateau(mode):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(9)
    metrics = np.round(r.random(40), 1).tolist()  # coarse: many non-improvements
    cfg = {
        "learning_rate": 1.0,
        "schedule": "plateau",
        "plateau_mode": mode,
        "plateau_patience": 1,
        "plateau_cooldown": 2,
        "plateau_factor": 0.5,
        "plateau_min_lr": 0.01,
    }
    state = optim.make_optimizer(cfg, 1, 1).init({"w": jnp.zeros(1)})
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=0.5, patience=1, cooldown=2, min_lr=0.01
    )
    ours, ref = [], []
    for m in metrics:
        state = optim.plateau_update(state, m, cfg)
        sched.step(m)
        ours.append(float(optim.plateau_scale(state)))
        ref.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert min(ref) < 1.0


def test_works_with_nnx_optimizer():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    cfg = {
        **PLATEAU,
        "plateau_patience": 0,
        "weight_decay": 1e-3,
        "weight_decay_mask": "no_bias_norm",
    }
    opt = nnx.Optimizer(model, optim.make_optimizer(cfg, 10, 100), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3)))))(model)
    opt.update(model, grads)
    assert isinstance(optim.current_lr(opt.opt_state), jax.Array)
    np.testing.assert_allclose(float(optim.current_lr(opt.opt_state)), 0.1, rtol=1e-6)
    for metric in (1.0, 1.0):
        opt.opt_state = optim.plateau_update(opt.opt_state, metric, cfg)
    np.testing.assert_allclose(float(optim.plateau_scale(opt.opt_state)), 0.1, rtol=1e-6)
    opt.update(model, grads)
    np.testing.assert_allclose(float(optim.current_lr(opt.opt_state)), 0.01, rtol=1e-6)


# -------------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    "field,value,valid",
    [
        ("schedule", "cosine_typo", "constant, piecewise, plateau, step, warmup_cosine"),
        ("weight_decay_mode", "l2", "coupled, decoupled"),
        ("weight_decay_mask", "biases", "all, no_bias_norm"),
        ("lr_boundaries_unit", "iters", "epochs, steps"),
        ("plateau_mode", "up", "max, min"),
    ],
)
def test_unknown_names_raise_config_error_listing_valid(field, value, valid):
    with pytest.raises(ConfigError, match=valid) as e:
        optim.make_optimizer({field: value}, 10, 100)
    assert "\n" not in str(e.value) and repr(value) in str(e.value)


def test_bad_values_raise_config_error():
    with pytest.raises(ConfigError, match="nesterov"):
        optim.make_optimizer({"nesterov": True}, 1, 1)
    with pytest.raises(ConfigError, match="momentum"):
        optim.make_optimizer({"momentum": 1.5}, 1, 1)
    with pytest.raises(ConfigError, match="learning_rate"):
        optim.make_optimizer({"learning_rate": -1}, 1, 1)
    with pytest.raises(ConfigError, match="plateau_factor"):
        optim.plateau_update(None, 0.0, {"schedule": "plateau", "plateau_factor": 2.0})


def test_default_config_is_a_configdict_with_every_field():
    cfg = optim.default_config()
    assert set(cfg.keys()) == set(optim.DEFAULTS)
    cfg.momentum = 0.9
    tx = optim.make_optimizer(cfg, 5, 50)
    state = tx.init({"w": jnp.zeros(2)})
    np.testing.assert_allclose(float(optim.current_lr(state)), optim.DEFAULTS["learning_rate"])
