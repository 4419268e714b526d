#!/usr/bin/env bash
# The AOT record: the ImageNet config's train and eval steps (vgg16 and vgg16_bn, bfloat16, global
# batch 256) compiled on this CPU host for each TPU and GPU target, with the largest batch that
# fits (--max-batch); one JSON per (model, target) in experiments/results/aot/, then the table of
# docs/accelerators.md. Needs both compilers: pip install -e ".[tpu-aot,gpu-aot]".
#
#   benchmarks/aot.sh                      # every target below; skips records already there
#   AOT_TARGETS="v5e-8 h100x8" benchmarks/aot.sh
#   AOT_REDO=1 benchmarks/aot.sh           # remake existing records too
#   AOT_ARCHS=vgg16_bn benchmarks/aot.sh   # one network only
#
# A TPU compile of the full step takes minutes on 2 cores, a GPU compile seconds, so the TPU
# searches stop after 3 train-step compiles (AOT_TPU_COMPILES) and say whether they were exact.
set -uo pipefail
cd "$(dirname "$0")/.."
out=experiments/results/aot
mkdir -p "$out"
targets=${AOT_TARGETS:-"h100x8 a100-80x8 2xh100x8 v5e-8 v6e-8 v4-8 v5p-8 v5e-32"}
for target in $targets; do
  for arch in ${AOT_ARCHS:-vgg16 vgg16_bn}; do
    file="$out/${arch}_${target}.json"
    if [ -e "$file" ] && [ -z "${AOT_REDO:-}" ]; then continue; fi
    # Exit status 2 = the batch does not fit: the record (with the largest batch) is still written.
    case "$target" in
      v*) budget=(--max-compiles="${AOT_TPU_COMPILES:-3}") ;;
      *) budget=() ;;
    esac
    python -m vggjax.aot --target="$target" --config=vggjax/configs/imagenet_vgg16.py \
      --config.model="$arch" --max-batch "${budget[@]}" --out="$file"
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then echo "aot: $arch on $target failed ($rc)" >&2; fi
  done
done
python tests/test_aot_record.py --write-docs
