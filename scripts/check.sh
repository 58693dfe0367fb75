#!/usr/bin/env bash
# Every check, locally and in CI: format, lint, type-check, the lock, the docs, tests (SQLite,
# with the PostgreSQL pass and the object-storage pass beside it).
#
# Every pass runs whatever the others do; the end prints one line per pass (name, result,
# seconds) and the exit status is non-zero if any pass failed. Arguments go to the main
# pytest pass (`scripts/check.sh tests/bot -k voice`); the PostgreSQL and object-storage
# passes then do not run.
set -uo pipefail
cd "$(dirname "$0")/.."

# Ctrl-C stops the whole check, not just the pass that is running.
bg_pids=()
# Ctrl-C also stops the passes running beside it, and everything they started.
descendants() {
    local child
    for child in $(pgrep -P "$1"); do
        echo "$child"
        descendants "$child"
    done
}
stop_side_passes() {
    local pid
    for pid in "${bg_pids[@]}"; do
        # shellcheck disable=SC2046
        kill -TERM "$pid" $(descendants "$pid") 2>/dev/null
    done
}
trap 'echo; echo "== interrupted"; stop_side_passes; exit 130' INT TERM

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
names=()
results=()
times=()
closings=()
failed=0
failed_names=()

now() { date +%s.%N; }

# closing_line LOG: pytest's closing line, "3 failed, 120 passed, 2 skipped in 61.20s (0:01:01)"
# (with -q it has no "=" around it), else the log's last line.
closing_line() {
    local closing
    closing=$(grep -E '^(=+ )?[0-9a-z ,]+ in [0-9.]+s( \([0-9:]+\))?( =+)?$' "$1" \
        | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    [ -n "$closing" ] || closing=$(tail -n 1 "$1")
    echo "$closing"
}

# run_pass NAME COMMAND...: run one pass, record its result and time.
# A pytest pass's output is also kept, for its closing line in the summary.
run_pass() {
    local name=$1
    shift
    local log="$logs/${#names[@]}.log" start rc closing=""
    echo "== $name"
    start=$(now)
    if [ "$1" = "pytest" ] || [ "${1%%=*}" != "$1" ]; then
        # (env assignments first, e.g. TADA_TEST_DB=postgres pytest ...)
        env "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        closing=$(closing_line "$log")
    else
        "$@"
        rc=$?
    fi
    record_pass "$name" "$start" "$rc" "$closing"
}

# record_pass NAME START RC CLOSING [END]: one line of the summary (its seconds from START to
# END, or to now).
record_pass() {
    names+=("$1")
    times+=("$(awk -v a="$2" -v b="${5:-$(now)}" 'BEGIN { printf "%.0f", b - a }')")
    closings+=("$4")
    if [ "$3" -eq 0 ]; then
        results+=("passed")
    else
        results+=("failed (exit $3)")
        failed=$((failed + 1))
        failed_names+=("$1")
    fi
}

# start_pass NAME COMMAND... / finish_pass I: a pass run beside the others (the PostgreSQL and
# object-storage passes, which mostly wait on their servers, and mypy). Its output is shown
# whole once it ends, then recorded like run_pass's.
bg_names=()
bg_starts=()
bg_pytest=()
start_pass() {
    local name=$1
    shift
    local log="$logs/bg${#bg_names[@]}.log"
    echo "== $name: started (its output follows when it ends)"
    bg_names+=("$name")
    bg_starts+=("$(now)")
    # Only a pytest pass's closing line goes to the summary (its counts are added up there).
    if [ "$1" = "pytest" ] || [ "${1%%=*}" != "$1" ]; then bg_pytest+=(1); else bg_pytest+=(0); fi
    (
        env "$@" >"$log" 2>&1
        rc=$?
        now >"$log.end"
        exit "$rc"
    ) &
    bg_pids+=("$!")
}
bg_finished=()
finish_pass() {
    local i=$1 rc closing="" log="$logs/bg$1.log"
    bg_finished[i]=1
    wait "${bg_pids[$i]}"
    rc=$?
    echo "== ${bg_names[$i]}"
    cat "$log"
    if [ "${bg_pytest[$i]}" -eq 1 ]; then closing=$(closing_line "$log"); fi
    record_pass "${bg_names[$i]}" "${bg_starts[$i]}" "$rc" "$closing" "$(cat "$log.end")"
}

# mkdocs build --strict into a temporary folder, removed however the build ends.
docs_build() (
    site="$(mktemp -d)"
    trap 'rm -rf "$site"' EXIT
    NO_MKDOCS_2_WARNING=1 mkdocs build --strict --config-file mkdocs.yml --site-dir "$site"
)

skip_pass() {
    echo "== $1: skipped ($2)"
    names+=("$1")
    results+=("skipped")
    times+=(0)
    closings+=("$2")
}

run_pass "ruff format" ruff format --check bot cogs engine tests bench scripts
run_pass "ruff lint" ruff check bot cogs engine tests bench scripts
# The test processes start Python hundreds of times (engines, workers, bots, children that
# decode hostile files). Where bytecode is not written (PYTHONDONTWRITEBYTECODE, set on
# some CI images) each recompiled the project's modules, and each pytest process rewrote
# every test module's asserts again (about 5 CPU s a process). Written once, read after
# (__pycache__ is ignored by git).
unset PYTHONDONTWRITEBYTECODE
# Everything beside the main pytest pass runs at a lower priority (nice): the main pass is
# the longest, so the others take the cores it leaves while its tests wait (on engines,
# jobs, the browser), and end before it does.
side=(nice -n 10)
# librosa's pYIN (the tests' pitch judge) compiled once, before processes run side by side:
# several compiling into its numba cache at once crashed a worker (scripts/warm_numba.py).
# Each process's first pYIN also takes a lock (bench/voice_quality.py), but other librosa
# functions share that cache. Its 35 s in a fresh environment (a few seconds after) run
# beside mypy, the lock and the docs; the pytest passes wait for it.
numba_pass=${#bg_names[@]}
start_pass "numba cache" python scripts/warm_numba.py
# mypy (one core for about 30 s without its cache) and the lock (constraints.txt against
# the public index only: a fresh machine's view; it mostly waits on the index) run beside.
start_pass "mypy" "${side[@]}" mypy
start_pass "lock" "${side[@]}" python scripts/check_lock.py
# The installed dependencies agree with each other (less what qwen-tts-hf declares and
# never uses: scripts/check_pip.py).
run_pass "pip check" python scripts/check_pip.py
# The documentation site: a broken link, a missing page or one left out of nav fails.
run_pass "docs" docs_build
finish_pass "$numba_pass"
# Each pytest pass lists its slowest tests (over 10 s), where trimming would pay.
durations=(--durations=15 --durations-min=10)
# The main pytest pass runs on one worker per core (pytest-xdist), at most 4 and one per 3 GiB
# of memory (each worker loads its own models); TADA_TEST_WORKERS=1 runs it in one process.
# A test file stays on one worker (--dist loadfile): its module fixtures are built once.
workers=${TADA_TEST_WORKERS:-$(python - <<'PY'
import os
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
try:
    with open("/proc/meminfo") as meminfo:
        kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    by_memory = max(1, kib // (3 * 1024 * 1024))
except (OSError, StopIteration):
    by_memory = cores
print(max(1, min(cores, 4, by_memory)))
PY
)}
# xdist's options for N workers (none for one: a plain process).
xdist() {
    if [ "$1" -gt 1 ]; then
        echo "-n $1 --dist loadfile --no-loadscope-reorder"
    fi
}
read -r -a parallel <<<"$(xdist "$workers")"
# The PostgreSQL and object-storage passes run beside the main pass, with half its workers
# each (one on two cores): they wait on their servers more than they compute (together
# about 60% of a core each when run alone), and the main pass's own waits leave the cores
# room (they run at the lower priority above).
side_workers=$((workers / 2 > 1 ? workers / 2 : 1))
read -r -a side_parallel <<<"$(xdist "$side_workers")"
# Each test process's torch and BLAS get their share of the cores (tests/__init__.py).
if [ "$#" -eq 0 ]; then
    export TADA_TEST_PROCESSES=$((workers + 2 * side_workers))
fi

# The engine and security suites, and the bot store's, again on a real PostgreSQL, which the
# tests start themselves (tests/servers.py). Skipped when pytest was given arguments.
pg="pytest, PostgreSQL: engine, security, bot store"
s3="pytest, object storage"
if [ "$#" -eq 0 ]; then
    # Once is enough, in the main pass: the tests marked no_database (the models', the
    # voice evaluation's, the bombs' memory; a marked test that opens a database fails,
    # tests/conftest.py), and the voice quality test, which clones and speaks over the API
    # as voice/test_api.py does here and adds how the clones sound. Of the bot suite: the
    # store's shared state, claims, quotas and shards (the rest reads its SQLite store file
    # directly). One pass for both: its workers start once.
    #
    # Also left to the main pass: the files whose database use is incidental to what they
    # test (models, decoders, input checks), where the rows they write are the ones the
    # API, trace, stream, storage and security tests here write too. Voices are cloned and
    # spoken on PostgreSQL by voice/test_trace.py and voice/test_stream.py; the voice API's
    # own file runs in the object-storage pass. These were about 130 of the pass's 300 CPU
    # seconds. The watermark's API tests (about 60 s) speak and trace as those two files do.
    start_pass "$pg" TADA_TEST_DB=postgres "${side[@]}" pytest -q "${side_parallel[@]}" "${durations[@]}" \
        -m "not no_database" tests/engine tests/security \
        --ignore=tests/engine/voice/test_quality.py \
        --ignore=tests/engine/voice/test_api.py \
        --ignore=tests/engine/voice/test_pocket.py \
        --ignore=tests/engine/voice/test_preload.py \
        --ignore=tests/engine/voice/test_neural.py \
        --ignore=tests/engine/voice/test_language.py \
        --ignore=tests/engine/voice/test_watermark.py \
        --ignore=tests/engine/image/test_generation_options.py \
        --ignore=tests/engine/image/test_lora_files.py \
        --ignore=tests/engine/image/test_zip_inspection.py \
        --ignore=tests/engine/image/test_checkpoints.py \
        --ignore=tests/security/test_decoders.py \
        --ignore=tests/security/test_inputs.py \
        --ignore=tests/security/test_bombs.py \
        --ignore=tests/security/test_audio_bounds.py \
        tests/bot/test_shared_state.py \
        tests/bot/test_policy.py tests/bot/test_sharding.py tests/bot/test_jobs_runner.py \
        tests/bot/test_jobs_panel.py tests/bot/test_quota.py
    # Uploads, LoRAs and voices with files in SeaweedFS (tests/engine/test_storage.py trains
    # and generates on both back ends in the main pass), and the pocket voices' stored
    # model states.
    start_pass "$s3" TADA_TEST_STORAGE=s3 "${side[@]}" pytest -q "${side_parallel[@]}" "${durations[@]}" \
        tests/engine/test_uploads.py tests/engine/image/test_demo_api.py \
        tests/engine/image/test_generation_options.py tests/engine/voice/test_api.py \
        tests/engine/voice/test_pocket_states.py
fi
echo "== pytest workers: $workers (beside it: $side_workers for each of the other passes)"
run_pass "pytest" pytest -q "${parallel[@]}" "${durations[@]}" "$@"
for i in "${!bg_names[@]}"; do
    [ -n "${bg_finished[i]:-}" ] || finish_pass "$i"
done
if [ "$#" -ne 0 ]; then
    for name in "$pg" "$s3"; do
        skip_pass "$name" "pytest was given arguments"
    done
fi

echo
echo "== summary: one line per pass"
for i in "${!names[@]}"; do
    printf '%-48s %-16s %6ss  %s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}" \
        "${closings[$i]}"
done
# The last line, pytest's form: the tests of every pytest pass added up, and the passes
# that failed (a lint or type failure counts as one failed pass, not as tests).
total=$(printf '%s\n' "${closings[@]}" | grep -oE '[0-9]+ (passed|failed|errors?|skipped|xfailed|xpassed)' \
    | sed -E 's/errors?$/errors/' \
    | awk '{ n[$2] += $1 } END {
        split("failed passed skipped xfailed xpassed errors", order, " ")
        for (i = 1; i <= 6; i++) if (n[order[i]] > 0) {
            out = out (out ? ", " : "") n[order[i]] " " order[i]
        }
        print out ? out : "no tests ran"
    }')
if [ "$failed" -eq 0 ]; then
    echo "== all ${#names[@]} passes passed: $total"
    exit 0
fi
echo "== $failed of ${#names[@]} passes failed ($(printf '%s; ' "${failed_names[@]}" | sed 's/; $//')): $total"
exit 1
