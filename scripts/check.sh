#!/usr/bin/env bash
# Every check, locally and in CI: format, lint, type-check, the lock, tests (SQLite, then
# the PostgreSQL passes and the object-storage pass).
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
echo "== docs: mkdocs build --strict (a broken link, a missing page or one left out of nav fails)"
# Built into a temporary folder, removed however the build ends (the subshell's trap).
(
    site="$(mktemp -d)"
    trap 'rm -rf "$site"' EXIT
    NO_MKDOCS_2_WARNING=1 mkdocs build --strict --config-file mkdocs.yml --site-dir "$site"
)
echo "== pytest"
pytest -q "$@"
# The engine and security suites again with the engine database on a real PostgreSQL, which
# the tests start themselves (tests/servers.py). Skipped when pytest was given arguments.
if [ "$#" -eq 0 ]; then
    echo "== pytest, PostgreSQL pass: tests/engine and tests/security on PostgreSQL"
    # Once is enough, in the pass above: the tests marked no_database (the models', the
    # voice evaluation's, the bombs' memory; a marked test that opens a database fails,
    # tests/conftest.py), and the voice quality test, which clones and speaks over the API
    # as voice/test_api.py does here and adds how the clones sound.
    TADA_TEST_DB=postgres pytest -q -m "not no_database" tests/engine tests/security \
        --ignore=tests/engine/voice/test_quality.py
    echo "== pytest, PostgreSQL pass: the bot store's shared state, claims, quotas and shards"
    # (the rest of the bot suite reads its SQLite store file directly)
    TADA_TEST_DB=postgres pytest -q tests/bot/test_shared_state.py tests/bot/test_policy.py \
        tests/bot/test_sharding.py tests/bot/test_jobs_runner.py tests/bot/test_jobs_panel.py \
        tests/bot/test_quota.py
    echo "== pytest, object-storage pass: uploads, LoRAs and voices with files in SeaweedFS"
    # (tests/engine/test_storage.py trains and generates on both back ends in the main pass)
    TADA_TEST_STORAGE=s3 pytest -q tests/engine/test_uploads.py \
        tests/engine/image/test_demo_api.py tests/engine/image/test_generation_options.py \
        tests/engine/voice/test_api.py
else
    echo "== pytest, PostgreSQL pass: skipped (pytest was given arguments)"
fi
