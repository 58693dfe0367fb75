#!/usr/bin/env bash
# Every check, locally and in CI: format, lint, type-check, the lock, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff format"
ruff format --check bot cogs engine tests bench scripts
echo "== ruff lint"
ruff check bot cogs engine tests bench scripts
echo "== mypy"
mypy
echo "== lock: constraints.txt against the public index only (a fresh machine's view)"
python scripts/check_lock.py
echo "== pip check: the installed dependencies agree with each other"
python -m pip check
echo "== pytest"
pytest -q "$@"
