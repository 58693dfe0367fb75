#!/usr/bin/env bash
# The GPU image benchmark, as one prepared script (a CUDA build of torch; nothing is
# downloaded): full-size SDXL and FLUX.1 dev pipelines built from their published configs
# (bench/configs/) with random weights, in bf16, through the engine's ImageModel:
# seconds per 1024x1024 image (SDXL 30 steps, FLUX 28), seconds per Upscale 2x (1024 ->
# 2048, img2img) and per Vary subtle / strong (img2img at 1024), LoRA training steps/s at 1024
# without and with the memory options (gradient checkpointing, 8-bit AdamW when
# bitsandbytes is installed), peak VRAM of each. Writes bench/results/lora_gpu.json.
# About 6 minutes on one H200 (estimate: not yet run on one); killed at 9.
# `--skip-training` measures generation, upscale and vary only (about half of it).
#
#   bench/lora_gpu.sh              # on the GPU machine
#   bench/lora_gpu.sh --dry-run    # anywhere: the same code on tiny models on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ "${1:-}" != "--dry-run" ]]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
PYTHONPATH=$PWD timeout 540 "$PY" bench/lora_gpu.py "$@"
