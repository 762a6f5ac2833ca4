#!/usr/bin/env bash
# CI performance gate (issue #9 item 6): instructions per item of the core
# loop, counted by valgrind's callgrind (stable on a noisy machine, unlike
# time), against the baseline committed in bench/perf_baseline.json.
#
#   bench/perf_gate.sh [BIN|BUILD_DIR]            compare; exit 1 when Ir/item
#                                                 grew more than the tolerance
#   bench/perf_gate.sh --update [BIN|BUILD_DIR]   rewrite the baseline
#
# Builds nothing: BIN is a wxarchiver binary, BUILD_DIR a build directory
# holding one (default ${WXA_BUILD_DIR:-build}/wxarchiver). Build it as CI
# does (tools/build.sh: RelWithDebInfo); other flags give other counts.
#
# What is counted: `wxarchiver import --threads 1 --to null:` (read, parse,
# map, compose, serialize, limit, index; rendered bytes discarded) over a
# small fixed corpus from `wxarchiver gen --seed 1 --clean`, every thread of
# the process, from exec to exit. The same code on every CPU: the base64
# encoder is forced to its scalar path (WXA_BASE64=scalar) and simdjson to
# its SSE4.2 kernel (SIMDJSON_FORCE_IMPLEMENTATION=westmere), glibc's string
# functions to their SSE2 variants (GLIBC_TUNABLES masks the rest: -2.3% here
# against the AVX2 ones); other libraries may still differ by CPU, so compare a
# baseline made on the same kind of machine as CI (the JSON records it).
# Environment: PERF_GATE_TOLERANCE (percent, default 5), PERF_GATE_WORK
# (scratch directory, default a fresh mktemp -d, removed afterwards),
# PERF_GATE_BASELINE (default bench/perf_baseline.json).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

update=0
if [[ ${1:-} == --update ]]; then update=1; shift; fi
target=${1:-${WXA_BUILD_DIR:-$root/build}}
if [[ -d "$target" ]]; then bin=$target/wxarchiver; else bin=$target; fi
[[ -x "$bin" ]] || { echo "perf-gate: no wxarchiver binary at $bin (build it first: tools/build.sh wxarchiver)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "perf-gate: needs valgrind (tools/setup-deps.sh perf)" >&2; exit 2; }
baseline=${PERF_GATE_BASELINE:-$root/bench/perf_baseline.json}
tolerance=${PERF_GATE_TOLERANCE:-5}

# The fixed corpus: change it and the baseline must be rewritten (the gate
# refuses to compare runs over different items).
gen_args=(--users 16 --days 4 --rate 20 --seed 1 --media-scale 0.02 --clean)
# A run over 2 items measures the fixed cost (loading, ICU and libphonenumber
# set-up, opening the index); the gate compares the marginal cost per item:
# (Ir(corpus) - Ir(tiny)) / (items(corpus) - items(tiny)).
tiny_args=(--users 2 --days 1 --rate 1 --seed 1 --media-scale 0.02 --clean)

if [[ -n ${PERF_GATE_WORK:-} ]]; then
  work=$PERF_GATE_WORK
  rm -rf "$work"
  mkdir -p "$work"
else
  work=$(mktemp -d -t wxa-perf-gate.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi

"$bin" gen --out "$work/corpus" "${gen_args[@]}" >/dev/null
"$bin" gen --out "$work/tiny" "${tiny_args[@]}" >/dev/null
export WXA_BASE64=scalar SIMDJSON_FORCE_IMPLEMENTATION=westmere
# glibc picks its string functions by CPU (ifuncs): mask the extensions so
# every x86-64 machine runs its baseline SSE2 variants and counts the same.
export GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-ERMS,-FSRM,-BMI1,-BMI2,-LZCNT,-MOVBE,-RTM,-SSE4_1,-SSE4_2,-SSSE3,-POPCNT
# count NAME: the import of $work/NAME under callgrind -> $work/NAME.callgrind
count() {
  valgrind --tool=callgrind --callgrind-out-file="$work/$1.callgrind" --log-file="$work/$1.valgrind.log" \
    "$bin" import --quiet --threads 1 --source "$work/$1" \
    --directory "$work/$1/directory.csv" --mapping "$work/$1/mapping.csv" \
    --mailboxes "$work/$1/mailboxes.txt" --to null: --index "$work/$1.index" \
    --report "$work/$1.report.json" || {
    echo "perf-gate: the import of $1 failed under valgrind:" >&2
    tail -n 20 "$work/$1.valgrind.log" >&2
    exit 2
  }
}
start=$(date +%s)
count tiny
count corpus
secs=$(( $(date +%s) - start ))

PERF_GATE_SECS=$secs PERF_GATE_GEN="${gen_args[*]} / ${tiny_args[*]}" python3 - "$work" "$baseline" "$update" "$tolerance" <<'PY'
import json, os, platform, re, subprocess, sys
work, baseline_path, update, tolerance = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])

def load(name):
    ir = None
    with open(f"{work}/{name}.callgrind") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                ir = int(line.split()[1])
    if ir is None:
        sys.exit(f"perf-gate: no instruction total in callgrind's output for {name}")
    counts = json.load(open(f"{work}/{name}.report.json"))["counts"]
    if counts["imported"] <= 0 or counts.get("failed", 0) or counts.get("oversize", 0):
        sys.exit(f"perf-gate: the {name} corpus must import cleanly: {counts}")
    return ir, counts["imported"]

tiny_ir, tiny_items = load("tiny")
ir, items = load("corpus")
per_item = (ir - tiny_ir) / (items - tiny_items)

def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()

valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
current = {
    "ir_per_item": round(per_item),
    "ir_total": ir,
    "items": items,
    "ir_fixed": tiny_ir,
    "items_fixed_run": tiny_items,
    "gen": os.environ["PERF_GATE_GEN"],
    "env": "WXA_BASE64=scalar SIMDJSON_FORCE_IMPLEMENTATION=westmere GLIBC_TUNABLES=" + os.environ.get("GLIBC_TUNABLES", ""),
    "valgrind": valgrind,
    "cpu": cpu(),
    "avx2": " avx2" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else None,
}
secs = os.environ["PERF_GATE_SECS"]
print(f"perf-gate: {ir:,} instructions for {items} items, {tiny_ir:,} for {tiny_items} (the fixed cost): "
      f"{per_item:,.0f} per item (callgrind runs {secs} s)")

if update:
    with open(baseline_path, "w") as f:
        json.dump(current, f, indent=2)
        f.write("\n")
    print(f"perf-gate: baseline rewritten: {baseline_path}")
    sys.exit(0)

try:
    base = json.load(open(baseline_path))
except FileNotFoundError:
    sys.exit(f"perf-gate: no baseline at {baseline_path}; create it with bench/perf_gate.sh --update")
if base["items"] != items or base["gen"] != current["gen"]:
    sys.exit(f"perf-gate: the corpus changed ({base['items']} items with '{base['gen']}' in the baseline, "
             f"{items} now): not comparable; rewrite the baseline with bench/perf_gate.sh --update")
for k in ("valgrind", "cpu", "avx2"):
    if base.get(k) != current[k]:
        print(f"perf-gate: note: {k} differs from the baseline's ({base.get(k)!r} vs {current[k]!r})")
change = 100.0 * (per_item / base["ir_per_item"] - 1.0)
print(f"perf-gate: baseline {base['ir_per_item']:,} per item; change {change:+.2f}% (limit +{tolerance:g}%)")
if change > tolerance:
    print("perf-gate: FAIL: the core loop costs more instructions per item than the baseline allows.\n"
          "  Profile it (bench/README.md, callgrind_annotate); if the cost is intended, rewrite the\n"
          "  baseline in the same commit: bench/perf_gate.sh --update")
    sys.exit(1)
if change < -tolerance:
    print("perf-gate: note: much cheaper than the baseline; consider bench/perf_gate.sh --update")
print("perf-gate: OK")
PY
