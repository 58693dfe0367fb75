#!/usr/bin/env bash
# The GPU image benchmark, as one prepared script (needs a CUDA build of torch 2.13).
# SDXL-architecture UNet from config with random weights in bf16: 1024x1024, 30-step
# denoising with classifier-free guidance (eager, then torch.compile), LoRA training
# steps/s; then the tiny pipeline on the GPU. Results: bench/results/image-*-gpu*.json,
# each naming the card. Target: 30 steps at or under 2 s on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" bench/image.py --sdxl-unet --device cuda --train-steps 20 \
    --out bench/results/image-sdxl-unet-gpu.json
"$PY" bench/image.py --sdxl-unet --device cuda --compile --train-steps 20 \
    --out bench/results/image-sdxl-unet-gpu-compiled.json
"$PY" bench/image.py --device cuda --out bench/results/image-tiny-gpu.json
