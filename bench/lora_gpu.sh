#!/usr/bin/env bash
# The GPU image benchmark, as one prepared script (needs a CUDA build of torch 2.13).
# SDXL-architecture UNet from config with random weights in bf16: 1024x1024, 30-step
# denoising with classifier-free guidance (eager, then torch.compile), LoRA training
# steps/s; then the tiny pipeline on the GPU. Results: bench/results/lora-*-gpu*.json,
# each naming the card. Target: 30 steps at or under 2 s on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" bench/lora.py --sdxl-unet --device cuda --train-steps 20 \
    --out bench/results/lora-sdxl-unet-gpu.json
"$PY" bench/lora.py --sdxl-unet --device cuda --compile --train-steps 20 \
    --out bench/results/lora-sdxl-unet-gpu-compiled.json
"$PY" bench/lora.py --device cuda --out bench/results/lora-tiny-gpu.json
