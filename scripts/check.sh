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
echo "== pytest"
pytest -q "$@"
# The engine and security suites again with the engine database on a real PostgreSQL, which
# the tests start themselves (tests/servers.py). Skipped when pytest was given arguments.
if [ "$#" -eq 0 ]; then
    echo "== pytest, PostgreSQL pass: tests/engine and tests/security on PostgreSQL"
    # (suites that never touch the database, the models' and the voice evaluation's, run
    # once: in the pass above)
    no_db=(voice/test_voice_quality.py test_model_store.py voice/test_audio.py
        voice/test_similarity.py voice/test_transcribe.py voice/test_parallel.py
        voice/test_quality.py image/test_pipeline.py image/test_buckets.py
        image/test_single_file.py image/test_enhancer.py image/test_adapters.py
        image/test_zipcheck.py test_devices.py)
    TADA_TEST_DB=postgres pytest -q tests/engine tests/security \
        "${no_db[@]/#/--ignore=tests/engine/}"
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
