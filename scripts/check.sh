#!/usr/bin/env bash
# Every check, locally and in CI: format, lint, type-check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff format"
ruff format --check bot cogs engine tests bench scripts
echo "== ruff lint"
ruff check bot cogs engine tests bench scripts
echo "== mypy"
mypy
echo "== pytest"
pytest -q "$@"
