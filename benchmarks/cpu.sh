#!/usr/bin/env bash
# The CPU benchmark records behind docs/performance.md and README.md's table, in one run (about
# 30 minutes on a 2-core CPU; run it on an otherwise idle machine: the ratios are only meaningful
# within one run, and each record notes the load average at its start and end).
#
#   benchmarks/cpu.sh            # all records
#   benchmarks/cpu.sh table      # only re-print the tables and redraw the plot from the records
set -euo pipefail
cd "$(dirname "$0")/.."
B=experiments/results/bench
bench() { python -m vggjax.bench "$@"; }
if [ "${1:-}" != "table" ]; then
  # The trainer's step against PyTorch eager and torch.compile, with the A/Bs of the CPU policy.
  bench --size 32 --batch 64 --steps 40 --torch \
    --variant plain:xla --variant old_tapgrad:auto,tapgrad_min_pixels=256 \
    --variant sum_squares:auto,squares_by_dot=False --out $B/vgg16_bn_32_b64.json
  bench --size 112 --batch 8 --steps 20 --torch --variant plain:xla \
    --variant rows128:auto,row_im2col_max_out_channels=128 --out $B/vgg16_bn_112_b8.json
  # glibc's huge-page tunable off (vggjax.hostmem): the page-fault A/B.
  bench --size 32 --batch 64 --steps 20 --torch --no-torch-compile --no-hugepages --no-warm-probe \
    --no-pipeline --out $B/vgg16_bn_32_b64_no_hugepages.json
  # Per-layer conv and max-pool profiles, and the time of every XLA op of the step.
  for shape in "32 64" "112 8"; do
    set -- $shape
    bench --size "$1" --batch "$2" --steps 3 --profile --no-pipeline --no-warm-probe --peak-size 2048 \
      --out $B/conv_profile_$1_b$2.json
    bench --size "$1" --batch "$2" --steps 3 --op-profile --no-pipeline --no-warm-probe --peak-size 2048 \
      --out $B/op_profile_$1_b$2.json
  done
fi
bench --table $B/vgg16_bn_32_b64.json $B/vgg16_bn_112_b8.json $B/vgg16_bn_32_b64_no_hugepages.json \
  --plot $B/step_times.png
