"""Is the compiled train step the same program in two checkouts? (A refactor that must not
change speed.)

    git worktree add /tmp/before COMMIT
    python benchmarks/compare_hlo.py /tmp/before . \
        --out experiments/results/bench/hlo_before_after_policy.json

(``COMMIT``: the revision before the refactor; the record keeps both checkouts' commits.)

Each checkout's own ``vggjax.bench`` builds the benchmark's train step (vgg16_bn, fc head, 32×32,
batch 64, SGD momentum 0.9, weight decay 5e-4; the default compute settings of that checkout), and
XLA:CPU compiles it in a fresh process. The optimised HLO is compared instruction by instruction
after dropping what does not change the program (instruction names, source-line metadata, the
stack-frame table). Identical instruction lists mean identical kernels and buffers: the same speed
by construction, which no timing on a shared machine can show as precisely.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import subprocess
import sys

CHILD = r"""
import sys, re, json
sys.path.insert(0, sys.argv[1])
import jax
import vggjax.bench as B
try:
    from vggjax.bench.step import step_fn_of
    batch_of = B.fixed_batch
except ImportError:  # checkouts from before the compute policy
    step_fn_of, batch_of = B._step_fn, B._batch
cfg = B.bench_config("vgg16_bn", 32, 64)
fn, make = step_fn_of(cfg)
state = jax.eval_shape(make)
batch = jax.eval_shape(lambda: batch_of(32, 64))
print(json.dumps(jax.jit(fn, donate_argnums=0).lower(state, batch).compile().as_text()))
"""


def instructions(hlo: str) -> list[str]:
    """The HLO's instructions with names and metadata removed, sorted (order of emission does
    not matter)."""
    text = re.sub(r", metadata=\{[^}]*\}", "", hlo)
    text = re.sub(r"%[\w.\-]+", "%x", text)
    return sorted(line.strip() for line in text.splitlines() if "%x = " in line)


def compiled_hlo(checkout: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.path.abspath(checkout)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, os.path.abspath(checkout)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def git_head(checkout: str) -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True
    )
    return proc.stdout.strip()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    result: dict = {
        "command": "python benchmarks/compare_hlo.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
    }
    sides = {}
    for side in ("before", "after"):
        ins = instructions(compiled_hlo(getattr(args, side)))
        kinds = collections.Counter(
            m.group(1) for m in (re.search(r"= \S+ ([\w\-]+)\(", i) for i in ins) if m
        )
        sides[side] = ins
        result[side] = {
            "checkout": getattr(args, side),
            "commit": git_head(getattr(args, side)),
            "instructions": len(ins),
            "sha256": hashlib.sha256("\n".join(ins).encode()).hexdigest(),
            "op_kinds": dict(sorted(kinds.items())),
        }
    result["identical"] = sides["before"] == sides["after"]
    result["only_before"] = sorted(set(sides["before"]) - set(sides["after"]))[:20]
    result["only_after"] = sorted(set(sides["after"]) - set(sides["before"]))[:20]
    print(
        f"before {result['before']['commit'][:10]}: "
        f"{result['before']['instructions']} instructions; "
        f"after {result['after']['commit'][:10]}: {result['after']['instructions']}; "
        f"identical: {result['identical']}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
