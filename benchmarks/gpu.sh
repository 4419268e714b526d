#!/usr/bin/env bash
# The GPU (or TPU) benchmark record, in one run: vgg16_bn 224x224, batch 256, bf16 and f32, the
# compute-policy A/B, MFU against the device's peak, and torchvision in PyTorch on the same device.
# No downloads (it needs jax with CUDA, torch and torchvision installed); about 5 minutes on one GPU;
# writes one JSON (default: experiments/results/bench/gpu_<device>.json).
#
#   benchmarks/gpu.sh [OUT.json] [extra python -m vggjax.bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
kind=$(python -c 'import jax; print(jax.devices()[0].device_kind.replace(" ", "_"))')
out=${1:-experiments/results/bench/gpu_${kind}.json}
shift || true
exec timeout 420 python -m vggjax.bench --accelerator --budget-s 240 --out "$out" "$@"
