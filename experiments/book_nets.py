"""The CIFAR-2 networks of *Deep Learning with PyTorch* ch. 8: gradients, accuracy, L2 = decay.

Reference case (seed 002): ``Net`` (tanh, 18,090 parameters), ``NetDepth`` (three ReLU
conv blocks), ``NetRes`` (the same plus one identity skip around conv3) and ``NetResDeep``
(conv1, then ``n_blocks`` ResBlocks — conv3×3 without bias, BatchNorm with weight 0.5,
ReLU, ``+ x`` — then fc). The book builds the blocks as
``nn.Sequential(*(n_blocks * [ResBlock(...)]))``, a list repeating ONE module: every block
shares one set of weights. ``NetResDeep(shared_block=True)`` is that faithful network, the
default builds independent blocks. The book trains with SGD lr 1e-2, batch 64, 100
epochs, and adds the penalty ``λ·Σw²`` (λ = 0.001) to the loss, "equivalent" to PyTorch's
``weight_decay = 2λ``.

What this script measures (the book's CIFAR-2, airplane vs bird, is not available
offline; the stand-in is ``vggjax_digits2``, the embedded 3-vs-8 split of scikit-learn's
8×8 digits, 285 train / 72 test images, upsampled to 32×32 and replicated to 3 channels):

1. per-layer kernel gradient norms at initialisation (the first step's gradients, one
   batch of 64) and at several points of training, for Net, NetDepth, NetRes and
   NetResDeep with 10, 50 and 100 blocks, shared and independent;
2. an accuracy table (train/test accuracy in eval mode after training);
3. the numeric check that SGD on ``loss + l2_penalty(params, 0.001)`` equals SGD with
   ``weight_decay = 0.002`` (coupled), step by step (max |Δparam|), with and without
   momentum; decoupled decay with momentum is the control that must differ;
4. parameter counts: the shared-block net has ONE block's parameters.

    python experiments/book_nets.py [--quick] [--full] [--out DIR]

Training goes through :func:`vggjax.experiment.train` (:func:`vggjax.training.fit`) with the
library's ``make_train_step`` (per-layer diagnostics). Check 3 trains both copies in one
``fit``, over a step that updates both on the same batch: the penalty copy needs its own
gradient (the library step has no parameter-penalty hook), built from
``vggjax.losses.softmax_cross_entropy`` + ``vggjax.losses.l2_penalty``.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vggjax import diagnostics, experiment, losses, optim
from vggjax.models.reference import Net, NetDepth, NetRes, NetResDeep
from vggjax.training import make_eval_step, make_train_step, merge, state_from_model

from figures.book_nets import make_plots

LR, BATCH, LAMBDA = 1e-2, 64, 1e-3  # the book's SGD lr, batch size and L2 lambda
DATASET = "vggjax_digits2"


def net_specs(blocks: tuple[int, ...]) -> dict[str, tuple]:
    """name -> (builder(seed), family). ResDeep nets use the book's n_chans1 = 32."""
    specs = {
        "Net": (lambda s: Net(rngs=s), "small"),
        "NetDepth": (lambda s: NetDepth(rngs=s), "small"),
        "NetRes": (lambda s: NetRes(rngs=s), "small"),
    }
    for n in blocks:
        family = "deep" if n > 10 else "resdeep"
        specs[f"NetResDeep{n}"] = (lambda s, n=n: NetResDeep(n_blocks=n, rngs=s), family)
        specs[f"NetResDeep{n}_shared"] = (
            lambda s, n=n: NetResDeep(n_blocks=n, shared_block=True, rngs=s),
            family,
        )
    return specs


def parse_args(argv=None):
    quick = "L2 check (10 steps), parameter counts, Net for 2 epochs (tests)"
    full = "the book's 100 epochs for every net, 3 seeds (hours on CPU)"
    p = experiment.parser(__doc__, experiment.results_dir(__file__), quick=quick, full=full)
    for flag, what in (
        ("--epochs", "epochs for Net/NetDepth/NetRes (default: the book's 100)"),
        ("--resdeep-epochs", "epochs for NetResDeep10 (default 20)"),
        ("--deep-epochs", "epochs for NetResDeep50/100 (default 2)"),
        ("--l2-steps", "steps of the L2 = weight-decay check (default 100)"),
    ):
        p.add_argument(flag, type=int, help=what)
    p.add_argument("--seeds", help="seeds of Net/NetDepth/NetRes (default 0,1,2)")
    p.add_argument("--deep-seeds", help="seeds of the NetResDeep nets (default 0)")
    p.add_argument("--blocks", default="10,50,100", help="NetResDeep depths (default %(default)s)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--replot", action="store_true", help="redraw the plots from OUT/result.json")
    return p.parse_args(argv)


def param_count(model) -> int:
    return int(sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param))))


def stream_stats(metrics: dict, feats: list[str]) -> dict:
    """Forward statistics at step 1: each residual add's output (the stream) and fc1's input."""
    adds = [f for f in feats if "_add" in f]  # block{i}_add or block_add#{i}, in order
    return {
        "stream_mean": [metrics[f"act_mean/{f}"] for f in adds],
        "stream_std": [metrics[f"act_std/{f}"] for f in adds],
        "fc1_input_mean": metrics["act_mean/flatten"],
        "fc1_input_std": metrics["act_std/flatten"],
        "logits_std": metrics["act_std/fc2"],
    }


# --------------------------------------------------------------------------- training


def train_net(name: str, build, seed: int, epochs: int, data, fast_compile: bool) -> dict:
    """The book's training of one net: SGD lr 1e-2, batch 64; per-layer gradients at a few steps."""
    xtr, ytr, xte, yte = data
    t0 = time.perf_counter()
    model = build(seed)
    n_params = param_count(model)
    steps_per_epoch = len(ytr) // BATCH
    total = epochs * steps_per_epoch
    tx = optim.make_optimizer({"learning_rate": LR}, steps_per_epoch, total)
    graphdef, eval_graphdef, state = state_from_model(model, tx)
    shape = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)
    order, feats = diagnostics.kernel_order(model, shape), diagnostics.feature_order(model, shape)
    # Unrolled 50/100-block nets take minutes to compile at XLA's default optimisation
    # level on 2 cores; level 0 compiles them in seconds and the convs run as fast.
    opts = {"xla_backend_optimization_level": 0} if fast_compile else None
    step = make_train_step(graphdef, tx, "softmax_cross_entropy", with_diagnostics=True)
    step = jax.jit(step, donate_argnums=0, compiler_options=opts)
    evaluate = jax.jit(
        make_eval_step(eval_graphdef, "softmax_cross_entropy"), compiler_options=opts
    )
    batches = experiment.shuffled_batches(xtr, ytr, BATCH, np.random.RandomState(seed))
    run = experiment.train(state, step, batches, total)

    grads = {}
    for i in sorted({1, max(1, total // 4), max(1, total // 2), total}):
        m = run.at(i)
        grads[str(i)] = {
            "grad_norm": experiment.kernel_grad_norms(m, order),
            "global_grad_norm": m["global_grad_norm"],
            "loss": m["loss"],
        }

    def acc(x, y):
        batch = {"image": x, "label": y, "mask": np.ones(len(y), bool)}
        out = jax.device_get(evaluate(run.state, batch))
        return float(out["correct"] / out["count"]), float(out["loss_sum"] / out["count"])

    (train_acc, train_loss), (test_acc, test_loss) = acc(xtr, ytr), acc(xte, yte)
    curve = run.history["loss"].tolist()
    rec = {
        "seed": seed,
        "epochs": epochs,
        "steps": total,
        "params": n_params,
        "layers": [p[: -len("/kernel")] for p in order],
        "grad_norms_at_step": grads,
        "forward_at_init": stream_stats(run.at(1), feats),
        "train_loss_curve": curve,
        "train_batch_acc_curve": run.history["accuracy"].tolist(),
        "train_acc": train_acc,
        "train_loss": train_loss,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "finite": bool(all(math.isfinite(v) for v in curve)),
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_to_first_step": round(run.first_step_seconds or 0.0, 1),
        "xla_backend_optimization_level": 0 if fast_compile else "default",
    }
    print(
        f"[train] {name:20s} seed {seed}: {total} steps, loss {np.mean(curve[-4:]):.3f}, "
        f"train acc {train_acc:.3f}, test acc {test_acc:.3f}, |g| conv1 at step 1 "
        f"{grads['1']['grad_norm'][0]:.3g} ({rec['seconds']}s, first step after "
        f"{rec['seconds_to_first_step']}s)",
        flush=True,
    )
    return rec


# --------------------------------------------------------------------------- L2 check


def penalty_step(graphdef, tx):
    """Copy A's step: the gradient of softmax CE + l2_penalty(params, λ), then ``tx`` (no decay)."""

    def step(state, batch):
        def loss_fn(model):
            logits = model(batch["image"])
            data_loss = losses.softmax_cross_entropy(logits, batch["label"], mask=batch["mask"])
            return data_loss + losses.l2_penalty(nnx.state(model, nnx.Param), LAMBDA)

        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))
        loss, grads = grad_fn(merge(graphdef, state))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss

    return step


def max_abs_diff(a, b) -> jax.Array:
    return jnp.max(
        jnp.stack(jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b)))
    )


def l2_check(steps: int, momentum: float, mode: str, data) -> dict:
    """Train two copies of ``Net`` side by side: penalty λΣw² in the loss vs weight_decay = 2λ.

    One ``fit`` over a step that updates both copies on the same batch and reports how far
    apart their parameters are after it.
    """
    xtr, ytr = data[0], data[1]
    tx_pen = optim.make_optimizer({"learning_rate": LR, "momentum": momentum}, 1, steps)
    wd = {"weight_decay": 2 * LAMBDA, "weight_decay_mode": mode}
    tx_wd = optim.make_optimizer({"learning_rate": LR, "momentum": momentum, **wd}, 1, steps)
    g_pen, _, s_pen = state_from_model(Net(rngs=0), tx_pen)
    g_wd, _, s_wd = state_from_model(Net(rngs=0), tx_wd)
    step_a = penalty_step(g_pen, tx_pen)
    step_b = make_train_step(g_wd, tx_wd, "softmax_cross_entropy")  # copy B: the library step

    def both(states, batch):
        (a, _), (b, _) = step_a(states[0], batch), step_b(states[1], batch)
        return (a, b), {"max_abs_param_diff": max_abs_diff(a.params, b.params)}

    batches = experiment.shuffled_batches(xtr, ytr, BATCH, np.random.RandomState(0))
    run = experiment.train((s_pen, s_wd), jax.jit(both), batches, steps)
    diffs = run.history["max_abs_param_diff"].tolist()
    moved = float(max_abs_diff(run.state[1].params, s_wd.params))
    rec = {
        "momentum": momentum,
        "weight_decay_mode": mode,
        "steps": steps,
        "max_abs_param_diff": max(diffs),
        "max_abs_param_diff_per_step": diffs,
        "max_abs_param_change_from_init": moved,
        "param_scale": float(max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(s_wd.params))),
    }
    print(
        f"[l2]    momentum {momentum} {mode:9s}: max |param diff| over {steps} steps "
        f"{max(diffs):.3g} (params moved up to {moved:.3g})",
        flush=True,
    )
    return rec


def param_counts(blocks: tuple[int, ...]) -> dict:
    """Parameter counts from abstract models (nothing drawn)."""
    count = lambda f: param_count(nnx.eval_shape(f))  # noqa: E731
    base = count(lambda: NetResDeep(n_blocks=0))
    out = {
        "Net": count(lambda: Net()),
        "NetDepth": count(lambda: NetDepth()),
        "NetRes": count(lambda: NetRes()),
        "NetResDeep_no_blocks": base,
        "one_ResBlock": count(lambda: NetResDeep(n_blocks=1)) - base,
    }
    for n in blocks:
        out[f"NetResDeep{n}"] = count(lambda: NetResDeep(n_blocks=n))
        out[f"NetResDeep{n}_shared"] = count(lambda: NetResDeep(n_blocks=n, shared_block=True))
    return out


# --------------------------------------------------------------------------- main


def budget(args) -> dict:
    """Epochs, seeds and depths of this run (``--quick``: the L2 check and Net only)."""
    seeds = lambda s, default: [int(v) for v in (s or default).split(",")]  # noqa: E731
    if args.quick:
        quick = {"epochs": args.epochs or 2, "rd_epochs": 0, "deep_epochs": 0}
        return {
            **quick,
            "l2_steps": args.l2_steps or 10,
            "seeds": [0],
            "deep_seeds": [],
            "blocks_run": (),
        }
    return {
        "epochs": args.epochs or 100,
        "rd_epochs": args.resdeep_epochs or (100 if args.full else 20),
        "deep_epochs": args.deep_epochs or (100 if args.full else 2),
        "l2_steps": args.l2_steps or 100,
        "seeds": seeds(args.seeds, "0,1,2"),
        "deep_seeds": seeds(args.deep_seeds, "0,1,2" if args.full else "0"),
        "blocks_run": tuple(int(b) for b in args.blocks.split(",") if b),
    }


def summarize(runs: dict) -> dict:
    """The accuracy table: per net, mean ± std over seeds, and the gradients at init."""
    table = {}
    for name, recs in runs.items():
        ta, te = [r["test_acc"] for r in recs], [r["train_acc"] for r in recs]
        first = [r["grad_norms_at_step"]["1"] for r in recs]
        table[name] = {
            "params": recs[0]["params"],
            "epochs": recs[0]["epochs"],
            "steps": recs[0]["steps"],
            "seeds": len(recs),
            "train_acc_mean": float(np.mean(te)),
            "train_acc_std": float(np.std(te)),
            "test_acc_mean": float(np.mean(ta)),
            "test_acc_std": float(np.std(ta)),
            "final_train_loss_mean": float(
                np.mean([np.mean(r["train_loss_curve"][-4:]) for r in recs])
            ),
            "init_grad_norm_first_layer": float(np.mean([f["grad_norm"][0] for f in first])),
            "init_grad_norm_last_layer": float(np.mean([f["grad_norm"][-1] for f in first])),
            "init_global_grad_norm": float(np.mean([f["global_grad_norm"] for f in first])),
            "seconds_per_run": float(np.mean([r["seconds"] for r in recs])),
        }
    return table


def shared_vs_independent(runs: dict, blocks: tuple[int, ...]) -> dict:
    """At init, the shared kernel's gradient is the sum of the n per-application gradients."""
    out = {}
    for n in blocks:
        a, b = runs.get(f"NetResDeep{n}"), runs.get(f"NetResDeep{n}_shared")
        if a and b:
            ga = a[0]["grad_norms_at_step"]["1"]["grad_norm"][1:-2]
            out[str(n)] = {
                "independent_block_grad_norm_min": min(ga),
                "independent_block_grad_norm_max": max(ga),
                "independent_block_grad_norm_first": ga[0],
                "independent_block_grad_norm_last": ga[-1],
                "independent_blocks_combined_norm": float(np.sqrt(np.sum(np.square(ga)))),
                "shared_block_grad_norm": b[0]["grad_norms_at_step"]["1"]["grad_norm"][1],
            }
    return out


def checks(l2: list, counts: dict, blocks: tuple[int, ...]) -> dict:
    base, one = counts["NetResDeep_no_blocks"], counts["one_ResBlock"]
    return {
        "l2_equals_weight_decay_plain_sgd_max_diff": l2[0]["max_abs_param_diff"],
        "l2_equals_weight_decay_momentum_max_diff": l2[1]["max_abs_param_diff"],
        "l2_vs_decoupled_momentum_max_diff (control, must differ)": l2[2]["max_abs_param_diff"],
        "net_params_18090": counts["Net"] == 18090,
        "shared_block_params_equal_one_block": all(
            counts[f"NetResDeep{n}_shared"] - base == one for n in blocks
        ),
        "independent_params_equal_n_blocks": all(
            counts[f"NetResDeep{n}"] - base == n * one for n in blocks
        ),
    }


def protocol(b: dict, n_train: int) -> dict:
    return {
        "optimizer": f"SGD lr {LR}, no momentum, no weight decay",
        "batch": BATCH,
        "steps_per_epoch": n_train // BATCH,
        "last_partial_batch": "dropped (one compiled shape)",
        "training": "vggjax.experiment.train (vggjax.training.fit), reshuffled every epoch",
        "epochs": {
            "Net/NetDepth/NetRes": b["epochs"],
            "NetResDeep10": b["rd_epochs"],
            "NetResDeep50/100": b["deep_epochs"],
        },
        "seeds": {"Net/NetDepth/NetRes": b["seeds"], "NetResDeep*": b["deep_seeds"]},
        "init": "library defaults: PyTorch's default for conv/fc, kaiming_normal(fan_in) for "
        "ResBlock convs, BatchNorm weight 0.5 / bias 0 in ResBlocks",
        "accuracy": "eval mode (BatchNorm running statistics) on the whole train and test splits",
        "grad_norms": "L2 norm of dL/dW per conv/fc kernel from the train step's diagnostics "
        "(step 1 = gradients at initialisation)",
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        with open(os.path.join(args.out, "result.json")) as f:
            result = json.load(f)
        print("wrote", make_plots(result, args.out))
        return result
    b = budget(args)
    blocks = tuple(int(n) for n in args.blocks.split(",") if n)
    data = tuple(
        a
        for split in ("train", "test")
        for a in experiment.digits_arrays(DATASET, split, image_size=32, channels=3)
    )
    counts = param_counts(blocks)
    modes = ((0.0, "coupled"), (0.9, "coupled"), (0.9, "decoupled"))
    l2 = [l2_check(b["l2_steps"], momentum, mode, data) for momentum, mode in modes]

    specs = net_specs(b["blocks_run"])
    if args.quick:
        specs = {"Net": specs["Net"]}
    runs: dict[str, list] = {}
    for name, (build, family) in specs.items():
        e = {"small": b["epochs"], "resdeep": b["rd_epochs"], "deep": b["deep_epochs"]}[family]
        for seed in b["seeds"] if family == "small" else b["deep_seeds"]:
            rec = train_net(name, build, seed, e, data, fast_compile=family != "small")
            runs.setdefault(name, []).append(rec)

    table = summarize(runs)
    result = experiment.record(
        argv,
        experiment="book_nets",
        data=f"{DATASET}: the embedded two-class split (digit 3 vs digit 8) of scikit-learn's 8x8 "
        "handwritten digits, 285 train / 72 test, upsampled to 32x32, grey replicated to 3 "
        "channels, dataset normalisation; stand-in for the book's CIFAR-2 (airplane vs bird), "
        "not available offline",
        protocol=protocol(b, len(data[1])),
        param_counts=counts,
        l2_vs_weight_decay={
            "lambda": LAMBDA,
            "weight_decay": 2 * LAMBDA,
            "net": "Net",
            "lr": LR,
            "runs": l2,
        },
        accuracy_table=table,
        shared_vs_independent_at_init=shared_vs_independent(runs, b["blocks_run"]),
        runs=runs,
        checks=checks(l2, counts, blocks),
    )
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["plots"] = [] if args.no_plots else make_plots(result, args.out)
    experiment.write_result(result, args.out)
    for name, t in table.items():
        print(
            f"{name:22s} {t['params']:8d} params, {t['epochs']} epochs, {t['seeds']} seeds: "
            f"train acc {t['train_acc_mean']:.3f}±{t['train_acc_std']:.3f}, "
            f"test acc {t['test_acc_mean']:.3f}±{t['test_acc_std']:.3f}"
        )
    print(json.dumps({"checks": result["checks"], "seconds": result["seconds"], "out": args.out}))
    return result


if __name__ == "__main__":
    main()
