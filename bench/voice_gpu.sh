#!/usr/bin/env bash
# The GPU voice benchmark, as one prepared script (needs a CUDA build of torch 2.13:
# `make gpu`). VibeVoice at the published 1.5B sizes, random weights built from config (no
# download), opened by the neural back end's own loading code in bf16 on the first GPU:
# RTF and first-audio latency over three texts, 10 diffusion steps per frame. Results:
# bench/results/voice_gpu.json, naming the card. About 3-5 min on one H200.
#   bench/voice_gpu.sh --dry-run   the same script on the CPU with the tiny model (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ "${1:-}" == "--dry-run" ]]; then
    exec "$PY" bench/voice_gpu.py --size tiny --device cpu --steps 2 --repeats 1 \
        --out "${OUT:-/tmp}/voice_gpu_dry_run.json"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA GPU: run make gpu"'
"$PY" bench/voice_gpu.py --size full --device cuda --out bench/results/voice_gpu.json
