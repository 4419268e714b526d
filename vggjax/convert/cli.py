"""``python -m vggjax.convert``: a torchvision or Keras weights file in, a vggjax checkpoint
directory out, with the two lines that say how to feed and fine-tune it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import jax
from flax import nnx

from vggjax.convert.fc_conv import to_fc_conv
from vggjax.convert.keras import from_keras
from vggjax.convert.store import save
from vggjax.convert.torchvision import from_torchvision
from vggjax.errors import ConfigError, VggjaxError
from vggjax.models.vgg import ARCHS, VGG

# What the imported weights expect as input (vggjax.features.normalize modes).
PREPROCESSING = {"torchvision": "torch", "keras": "caffe"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vggjax.convert",
        description="Convert torchvision or Keras VGG weights into a vggjax checkpoint that "
        "`python -m vggjax.train --config.init_from=OUTPUT` fine-tunes from.",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("torchvision", "keras"),
        help="the framework that wrote --input",
    )
    p.add_argument(
        "--arch", required=True, choices=sorted(ARCHS), help="VGG architecture of the weights"
    )
    p.add_argument(
        "--input",
        required=True,
        help="torchvision: .pth/.pt state dict or .safetensors; "
        "keras: .weights.h5, .keras or legacy .h5",
    )
    p.add_argument("--output", required=True, help="new directory for the vggjax checkpoint")
    p.add_argument(
        "--head",
        choices=("fc", "fc_conv"),
        default="fc",
        help="fc_conv: port fc6-fc8 to 7x7 and 1x1 convs (dense evaluation)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter CLI on ``argv`` (default ``sys.argv[1:]``); returns 0, or exits with
    status 2 on a user error.

    Errors (a missing or foreign file, a pickle that is not a tensor state dict, weights of
    another architecture) are printed as one ``error: ...`` line without a traceback.
    """
    args = _parser().parse_args(argv)
    try:
        model, out = _convert(args)
    except VggjaxError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2)
    _report(args, model, out)
    return 0


def _convert(args: argparse.Namespace) -> tuple[VGG, str]:
    """Read ``args.input``, port the head if asked, and save: ``(model, output directory)``."""
    if args.source == "torchvision":
        model = from_torchvision(args.input, args.arch)
    else:
        model = from_keras(args.input, args.arch)
    if args.head == "fc_conv":
        if not model.has_imported_head:
            raise ConfigError(
                f"{args.input} has no classifier to port: "
                "--head fc_conv needs weights with the top (fc) layers"
            )
        model = to_fc_conv(model)
    out = save(
        model,
        args.output,
        meta={
            "source": args.source,
            "input": os.path.abspath(args.input),
            "preprocessing": PREPROCESSING[args.source],
        },
    )
    return model, out


def _report(args: argparse.Namespace, model: Any, out: str) -> None:
    """What was written, and how to feed and fine-tune it."""
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    has_head = model.has_imported_head
    what = f"{model.num_classes} classes" if has_head else "backbone only (no top layers)"
    print(
        f"converted {args.arch} from {args.source} ({n:,} parameters, {what}, "
        f"head {args.head}) -> {out}"
    )
    mode = PREPROCESSING[args.source]
    print(
        f"inputs: vggjax.features.normalize(images, {mode!r}) ("
        + (
            "RGB in [0, 1], ImageNet mean/std)"
            if mode == "torch"
            else "RGB in [0, 1] -> BGR 0..255 minus the ImageNet mean)"
        )
    )
    print(
        "fine-tune: python -m vggjax.train --config=vggjax/configs/finetune.py "
        f"--config.model={args.arch} --config.init_from={out}"
    )
