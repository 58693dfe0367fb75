#!/usr/bin/env bash
# The qwen3 GPU voice benchmark, as one prepared script. Needs: a CUDA build of torch 2.13
# (`make gpu`) and qwen-tts-hf (`make setup` installs it, --no-deps); no network.
#   bench/voice_gpu_qwen3.sh             Qwen3-TTS 1.7B Base sizes, random weights built
#                                        from config on the GPU, bf16 (about 4 GB of weights
#                                        plus a 4 GB temporary folder; a few minutes on one H100)
#   bench/voice_gpu_qwen3.sh FOLDER      the real weights, pre-placed: a folder pulled on a
#                                        machine with a network (`tada-engine models pull
#                                        Qwen/Qwen3-TTS-12Hz-1.7B-Base`, then copy
#                                        data/models/Qwen--Qwen3-TTS-12Hz-1.7B-Base/ over)
#   bench/voice_gpu_qwen3.sh --dry-run   the same script on the CPU with the tiny model
# Results: bench/results/voice_gpu_qwen3.json (or ..._pulled.json), naming the card.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ "${1:-}" == "--dry-run" ]]; then
    exec "$PY" bench/voice_gpu_qwen3.py --size tiny --device cpu --repeats 1 \
        --out "${OUT:-/tmp}/voice_gpu_qwen3_dry_run.json"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA GPU: run make gpu"'
"$PY" -c 'import qwen_tts' 2>/dev/null || {
    echo "qwen-tts-hf is not installed: $PY -m pip install --no-deps -c constraints.txt qwen-tts-hf" >&2
    exit 1
}
if [[ -n "${1:-}" ]]; then
    test -f "$1/speech_tokenizer/config.json" || {
        echo "$1 is not a pulled Qwen3-TTS 12 Hz folder (no speech_tokenizer/config.json)" >&2
        exit 1
    }
    exec "$PY" bench/voice_gpu_qwen3.py --model "$1" --device cuda \
        --out "${OUT:-bench/results}/voice_gpu_qwen3_pulled.json"
fi
exec "$PY" bench/voice_gpu_qwen3.py --size full --device cuda \
    --out "${OUT:-bench/results}/voice_gpu_qwen3.json"
