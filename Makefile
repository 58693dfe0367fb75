# The README's two commands: `make run` and `make test`. Each sets itself up, idempotently.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser voice-data run test check bench lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel; unpinned, another package would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[engine,ml,dev,sandbox]'
	touch $(STAMP)

# Debian's Chromium for the sandbox's browser test (tests/sandbox); skipped once installed.
# Needs root (as in CI); elsewhere install it yourself or the browser test skips (CI fails).
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "make: could not install chromium"

# Debian packages whose recordings and voices are the voice quality evaluation's speakers
# (tests/engine/voice/test_voice_quality.py, bench/voice_quality.py); test-only, like Chromium.
VOICE_DATA := /usr/bin/flite /usr/share/pocketsphinx/test/data/librivox /usr/share/sounds/alsa/Front_Center.wav
voice-data:
	@for f in $(VOICE_DATA); do test -e $$f || missing=1; done; test -z "$$missing" || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		flite pocketsphinx-testdata alsa-utils >/dev/null; } || echo "make: could not install the voice evaluation data"

run: setup
	$(VENV)/bin/tada-bot

test: setup browser voice-data
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/check.sh

bench: setup voice-data
	$(PY) bench/upload.py
	$(PY) bench/lora.py
	$(PY) bench/voice.py
	$(PY) bench/voice_quality.py
	$(PY) bench/sandbox_start.py
	$(PY) bench/gate.py

# Refresh the lock after changing dependencies (then run `make test`).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^tada-discord' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
