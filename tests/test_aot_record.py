"""The committed AOT record (``experiments/results/aot/``, made by ``benchmarks/aot.sh``) and the
table of docs/accelerators.md generated from it: the table is the records' (drift test), and every
record is of the trainer's ImageNet config, native on its target, with a gradient all-reduce."""

from __future__ import annotations

import glob
import json
import os

from repo import ROOT, GeneratedTable

from vggjax.aot import report

RECORD = os.path.join(ROOT, "experiments", "results", "aot")
# Table order: GPUs then TPUs, single host before multi-host, then the model.
ORDER = ("h100x8", "a100-80x8", "2xh100x8", "v5e-8", "v6e-8", "v4-8", "v5p-8", "v5e-32")


def records() -> list[dict]:
    found = []
    for path in glob.glob(os.path.join(RECORD, "*.json")):
        with open(path) as f:
            found.append(json.load(f))

    def key(r):
        name = r["target"]["name"]
        return (ORDER.index(name) if name in ORDER else len(ORDER), name, r["config"]["model"])

    return sorted(found, key=key)


def missing() -> list[str]:
    """The (model, target) pairs of the record's plan (``ORDER`` x both models) not compiled yet."""
    have = {(r["config"]["model"], r["target"]["name"]) for r in records()}
    return [f"{m} on {t}" for t in ORDER for m in ("vgg16", "vgg16_bn") if (m, t) not in have]


def render() -> str:
    todo = missing()
    tail = (
        f"\n\nNot compiled yet: {', '.join(todo)} (each TPU record is several compiles of "
        "minutes on this 2-core host; `benchmarks/aot.sh` makes the missing ones)."
        if todo
        else ""
    )
    return report.markdown(records()) + tail


TABLE = GeneratedTable("accelerators.md", "aot", "tests/test_aot_record.py", render)


def test_docs_table_is_the_committed_record():
    TABLE.check()


def test_every_record_is_the_imagenet_step_native_on_its_target():
    found = records()
    assert found, "no AOT record: run benchmarks/aot.sh"
    for r in found:
        c, train = r["config"], r["steps"]["train"]
        assert c["model"] in ("vgg16", "vgg16_bn") and c["image_size"] == 224
        assert (c["num_classes"], c["dtype"], c["batch_size"]) == (1000, "bfloat16", 256)
        if "collectives" in train:  # compiled (a step XLA refused for memory has no program)
            assert train["cpu_formulations"]["native"], r["target"]["name"]
            assert train["collectives"]["all-reduce"]["count"] >= 1
            assert train["memory"]["argument_bytes"] >= train["expected_argument_bytes"]["total"]


if __name__ == "__main__":
    TABLE.main()
