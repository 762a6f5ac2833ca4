#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and runs
# each in turn for RUNS executions (one at a time: the machine is shared).
# New corpus entries go to a scratch directory; afterwards only those that add
# coverage are merged into tests/fuzz/corpus/<target>/ (MERGE=0 skips that).
# Crashers land in tests/fuzz/crashers/<target>/.
#
# Usage: tests/fuzz/run_fuzzers.sh [target...]
#   RUNS=10000000  executions per target (libFuzzer -runs)
#   MAX_TIME=0     seconds per target at most (libFuzzer -max_total_time; 0: no limit)
#   MERGE=1        merge coverage-adding inputs into the committed corpus
#   WXA_FUZZ_BUILD_DIR=build-fuzz, WXA_JOBS=2
# Needs clang and the libFuzzer runtime: apt-get install clang-14 libclang-rt-14-dev llvm-14
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fuzz_dir=$root/tests/fuzz
build=${WXA_FUZZ_BUILD_DIR:-$root/build-fuzz}
runs=${RUNS:-10000000}
merge=${MERGE:-1}
max_time=${MAX_TIME:-0}
# The CSV and media targets write their inputs to files: on a disk, ext4
# flushes a truncated-and-rewritten file on close, which halves their speed.
if [[ -z ${TMPDIR:-} && -d /dev/shm && -w /dev/shm ]]; then export TMPDIR=/dev/shm; fi

all_targets=(fuzz_record_parser fuzz_csv fuzz_media_index fuzz_render_roundtrip)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")

# Largest input per target: a record line, a CSV, an index, a record to
# render. Long enough for every shape (the seeds' deep nesting is replayed in
# full by ctest); short enough to keep each target fast.
max_len() {
  case $1 in
    fuzz_record_parser) echo 2048 ;;
    fuzz_csv) echo 1024 ;;
    fuzz_media_index) echo 1024 ;;
    fuzz_render_roundtrip) echo 2048 ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

command -v clang++ >/dev/null || { echo "clang++ not found (apt-get install clang-14 libclang-rt-14-dev llvm-14)" >&2; exit 2; }
if [[ ! -f $build/build.ninja ]]; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DWXA_FUZZ=ON -DWXA_SANITIZE=ON -DWXA_BUILD_BENCH=OFF >/dev/null
fi
build_args=()
for t in "${targets[@]}"; do build_args+=(--target "$t"); done
if ! cmake --build "$build" -j "${WXA_JOBS:-2}" "${build_args[@]}" >"$build/fuzz-build.log" 2>&1; then
  grep -vE '^\[[0-9]+/[0-9]+\] ' "$build/fuzz-build.log" | tail -n 60 >&2
  echo "fuzz build failed; full log: $build/fuzz-build.log" >&2
  exit 1
fi

# malloc_context_size=0: no stack is recorded at each malloc/free (a crash
# report still has its own stack); 1.37x the executions per second on fuzz_csv.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:malloc_context_size=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
failed=0
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/$t
  corpus=$fuzz_dir/corpus/$t
  crashers=$fuzz_dir/crashers/$t
  scratch=$build/fuzz-scratch/$t
  log=$build/fuzz-logs/$t.log
  mkdir -p "$corpus" "$crashers" "$scratch" "$(dirname "$log")"
  len=$(max_len "$t")
  echo "== $t: $runs runs, max_len $len, log $log"
  start=$(date +%s)
  # The scratch directory comes first: libFuzzer writes new inputs there.
  status=0
  "$bin" -runs="$runs" -max_total_time="$max_time" -max_len="$len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$crashers/" "$scratch" "$corpus" >"$log" 2>&1 || status=$?
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)
  echo "   status $status, ${secs}s, execs ${execs:-?}, exec/s ${rate:-?}"
  echo "   last: $last"
  if [[ $status -ne 0 ]]; then
    failed=1
    grep -E 'ERROR|SUMMARY|fuzz check failed|Test unit written' "$log" | head -n 20 || true
    continue
  fi
  if [[ $merge == 1 ]]; then
    # Edges only (-use_counters=0): hit-count buckets would keep ~6x the files.
    "$bin" -merge=1 -use_counters=0 -max_len="$len" "$corpus" "$scratch" >"$log.merge" 2>&1
    echo "   merge: $(grep -E 'MERGE-OUTER: [0-9]+ new files' "$log.merge" || tail -n1 "$log.merge")"
  fi
done
exit $failed
