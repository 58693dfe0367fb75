#!/usr/bin/env bash
# Every check, locally and in CI: format, lint, type-check, the lock, tests (SQLite, then
# the engine's PostgreSQL pass).
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
# The engine and security suites again with the engine database on a real PostgreSQL, which
# the tests start themselves (tests/servers.py). Skipped when pytest was given arguments.
if [ "$#" -eq 0 ]; then
    echo "== pytest, PostgreSQL pass: tests/engine and tests/security on PostgreSQL"
    # (the voice evaluation and the model pulls never touch the database: once is enough)
    TADA_TEST_DB=postgres pytest -q tests/engine tests/security \
        --ignore=tests/engine/voice/test_voice_quality.py --ignore=tests/engine/test_model_store.py
else
    echo "== pytest, PostgreSQL pass: skipped (pytest was given arguments)"
fi
