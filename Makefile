# The README's two commands: `make run` and `make test`. Each sets itself up, idempotently.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch's CPU build comes from PyTorch's own CPU index: PyPI's Linux wheel is the CUDA build
# (3 GB more). The lock pins the public version (torch==2.13.0), which either build
# satisfies, so the same lock installs from PyPI alone, from this index, or from local wheels.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# `make gpu`: the CUDA build. By default PyPI's own torch wheel (exact version, so that no
# local "+cpu" build is taken instead); for another CUDA version, e.g.
#   make gpu TORCH_GPU='torch==2.13.0+cu126' TORCH_GPU_INDEX=https://download.pytorch.org/whl/cu126
TORCH_GPU ?= torch===2.13.0
TORCH_GPU_INDEX ?=

.PHONY: setup gpu browser voice-data run run-gpu test check-lock check bench lock clean

setup: $(STAMP)

# One line per step, and pip's own progress (Collecting / Downloading) under each: the first
# set-up downloads about 750 MB and takes a few minutes (README, "The two commands").
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "make: Python 3.11 or newer is needed; $(PYTHON) is $$($(PYTHON) --version 2>&1)." \
		"Run e.g. make PYTHON=python3.12 run"; exit 1; }
	@echo "== set-up 1/4: virtual environment $(VENV) ($$($(PYTHON) --version))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "== set-up 2/4: pip"
	@$(PY) -m pip install -q --upgrade pip
	@echo "== set-up 3/4: torch 2.13.0, CPU build (about 190 MB; \`make gpu\` installs the CUDA build)"
	$(PY) -m pip install --retries 1 --no-deps -c constraints.txt --extra-index-url $(TORCH_CPU_INDEX) torch
	@echo "== set-up 4/4: the project and its pinned dependencies, torch's too (about 560 MB)"
	@# By uv, from pip's own sources (scripts/install.py: 90 s became about 45 s on a
	@# quiet 2-core machine); by pip if uv cannot.
	$(PY) scripts/install.py -c constraints.txt -e '.[engine,ml,dev,sandbox]'
	@# Qwen3-TTS's model code (the GPU voice back end, engine/voice/qwen3.py): without its
	@# declared dependencies, which pin torchaudio (no build for our torch), sox and gradio,
	@# none of which the 12 Hz models use (pyproject.toml, [project.optional-dependencies]).
	$(PY) -m pip install --no-deps -c constraints.txt qwen-tts-hf
	@touch $(STAMP)
	@echo "== set-up done: $(VENV) holds $$(du -sh $(VENV) | cut -f1)"

# The CUDA build of torch in place of the CPU one (Linux with an NVIDIA driver); the engine's
# image back end then runs on the GPU (engine.image.device = "auto"). Skipped when installed.
gpu: setup
	@if $(PY) -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null; then \
		echo "== torch CUDA build already installed"; else \
		echo "== torch 2.13.0, CUDA build (about 3 GB with its CUDA libraries)" && \
		$(PY) -m pip uninstall -q -y torch && \
		$(PY) -m pip install -c constraints.txt \
			$(if $(TORCH_GPU_INDEX),--index-url $(TORCH_GPU_INDEX)) '$(TORCH_GPU)'; fi

# The tests' two non-Python prerequisites (tests/prerequisites.py): Chromium for the sandbox's
# browser test (tests/sandbox) and Debian's recordings and voices for the voice quality
# evaluation (tests/engine/voice/test_voice_quality.py, bench/voice_quality.py). As root on
# Debian/Ubuntu they are installed with apt-get (waiting at most 120 s for the package lock);
# otherwise the step says which tests will skip, why, and the install command per platform,
# and goes on. With CI=true a missing prerequisite fails here, and its tests fail too.
# `python3 -m tests.prerequisites show browser` prints the same without installing.
browser:
	@$(PYTHON) -m tests.prerequisites install browser

voice-data:
	@$(PYTHON) -m tests.prerequisites install voice-data

run: setup
	@# The voice model the config names, once (resumable; with no network: one line, and
	@# the CPU reference serves until a later start pulls it).
	-@$(VENV)/bin/tada-engine models pull --offline-ok
	$(VENV)/bin/tada-bot

run-gpu: gpu
	@# As `make run`, with torch's CUDA build: "auto" pulls Qwen3-TTS too (the GPU voice).
	-@$(VENV)/bin/tada-engine models pull --offline-ok
	$(VENV)/bin/tada-bot

test: setup browser voice-data
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/check.sh

# The lock against the public index only (also part of `make test`).
check-lock: setup
	$(PY) scripts/check_lock.py

bench: setup voice-data
	$(PY) bench/upload.py
	$(PY) bench/lora.py
	$(PY) bench/voice.py
	$(PY) bench/voice_quality.py
	$(PY) bench/sandbox_start.py
	$(PY) bench/gate.py
	$(PY) bench/hostile.py
	$(PY) bench/hostile_audio.py
	$(PY) bench/image_safety.py

# Refresh the lock after changing dependencies (then run `make test`). A local build label
# (torch's "+cpu") is dropped: the public index has no such version.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^tada-discord' \
		| sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*$$/\1/' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
