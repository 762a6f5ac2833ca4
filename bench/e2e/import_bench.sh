#!/usr/bin/env bash
# End-to-end import benchmark, side by side with a plain copy in the same run:
#   1. generate a clean corpus of about RECORDS records (no broken records,
#      no files over 10 MiB, media scaled down by MEDIA_SCALE);
#   2. reference: cp -r of the corpus, then sync (a plain copy, made durable);
#   3. first import into a Maildir (with its LMDB index);
#   4. rerun of the same command (cursors: nothing new to read);
#   5. rerun with --rescan (every record read again, skipped by the index
#      without rendering: the skip path).
# Prints items/s, MB/s, peak RSS and the ratios, and writes them as JSON to
# $WORK/result.json. Usage: RECORDS=100000 bench/e2e/import_bench.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
records=${RECORDS:-100000}
work=${WORK:-/tmp/wxa-e2e-$records}
scale=${MEDIA_SCALE:-0.02}
bin=${WXA_BUILD_DIR:-$root/build}/wxarchiver
[[ -x "$bin" ]] || "$root/tools/build.sh" wxarchiver
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }

days=10
users=$(( (records + 20 * days - 1) / (20 * days) ))
if [[ -e "$work" ]]; then
  rm -rf "$work"
  sync
  # ext4 without a journal (this machine's root file system) will not reuse
  # an inode deleted in the last 30-35 s and scans past each one when it
  # allocates (fs/ext4/ialloc.c, recently_deleted): right after removing a
  # million files every create is slower. Wait it out so that the timed
  # steps all start from the same state.
  sleep "${SETTLE_S:-36}"
fi
mkdir -p "$work"
"$bin" gen --out "$work/corpus" --users "$users" --days "$days" --rate 20 --seed 1 \
  --media-scale "$scale" --clean >/dev/null
corpus_bytes=$(du -sb "$work/corpus" | cut -f1)

# run NAME CMD...: wall seconds, peak RSS (KB) and user+system CPU seconds
# into $NAME_s / $NAME_kb / $NAME_cpu (also kept in $work/NAME.time).
run() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %M %U %S" -o "$work/$name.time" "$@" >"$work/$name.out" 2>&1
  local secs kb user sys
  read -r secs kb user sys <"$work/$name.time"
  printf -v "${name}_s" '%s' "$secs"
  printf -v "${name}_kb" '%s' "$kb"
  printf -v "${name}_cpu" '%s' "$user user + $sys sys"
}
args=(import --quiet --source "$work/corpus" --directory "$work/corpus/directory.csv"
      --mapping "$work/corpus/mapping.csv" --mailboxes "$work/corpus/mailboxes.txt"
      --to "maildir:$work/out")
run copy bash -c "cp -r '$work/corpus' '$work/copy' && sync -f '$work/copy'"
run first "$bin" "${args[@]}" --report "$work/first.json"
run rerun "$bin" "${args[@]}" --report "$work/rerun.json"
run rescan "$bin" "${args[@]}" --rescan --report "$work/rescan.json"
# The file-system floor for this output: a plain copy of the Maildir tree the
# import produced (same files, same bytes), made durable. Last, because at a
# million items it is the slowest step; TREECOPY=0 skips it.
treecopy_s=0 treecopy_cpu=-
if [[ ${TREECOPY:-1} != 0 ]]; then
  run treecopy bash -c "cp -r '$work/out' '$work/out-copy' && rm -rf '$work/out-copy/.wxarchiver' && sync -f '$work/out-copy'"
  rm -rf "$work/out-copy"
fi
"$bin" status --json --to "maildir:$work/out" >"$work/status.json"

FIRST_CPU=$first_cpu TREECOPY_CPU=$treecopy_cpu python3 - "$work" "$corpus_bytes" "$copy_s" "$copy_kb" "$first_s" "$first_kb" "$rerun_s" \
  "$rerun_kb" "$rescan_s" "$rescan_kb" "$treecopy_s" <<'PY'
import json, os, sys
w, corpus_bytes = sys.argv[1], int(sys.argv[2])
copy_s, copy_kb, first_s, first_kb, rerun_s, rerun_kb, rescan_s, rescan_kb, treecopy_s = map(float, sys.argv[3:])
first_report = json.load(open(f"{w}/first.json"))
first = first_report["counts"]
mem = first_report.get("process", {})
rescan = json.load(open(f"{w}/rescan.json"))["counts"]
status = json.load(open(f"{w}/status.json"))
items = first["items"]
assert first["imported"] > 0 and rescan["imported"] == 0, "the rescan must import nothing"
assert rescan["already_present"] == first["imported"], "the rescan must find every item done"
assert rescan.get("rendered", 0) == 0, "the skip path must not render"
r = {
  "records": first["records"], "items": items, "deliveries": first["deliveries"],
  "bytes_written": first["bytes_written"], "corpus_bytes": corpus_bytes,
  "copy": {"s": copy_s, "MB_per_s": corpus_bytes / 1e6 / copy_s, "peak_rss_mb": copy_kb / 1024},
  "output_tree_copy": {"s": treecopy_s, "MB_per_s": first["bytes_written"] / 1e6 / treecopy_s if treecopy_s else None},
  "first": {"s": first_s, "items_per_s": items / first_s,
            "MB_per_s": first["bytes_written"] / 1e6 / first_s, "peak_rss_mb": first_kb / 1024,
            "rss_anon_mb_at_end": mem.get("rss_anon_bytes", 0) / 2**20,
            "rss_file_mb_at_end": mem.get("rss_file_bytes", 0) / 2**20},
  "rerun": {"s": rerun_s, "peak_rss_mb": rerun_kb / 1024},
  "rescan": {"s": rescan_s, "items_per_s": rescan["items"] / rescan_s, "peak_rss_mb": rescan_kb / 1024},
  "ratios": {"first_over_rerun": first_s / rerun_s, "first_over_rescan": first_s / rescan_s,
             "import_MBps_over_copy_MBps": (first["bytes_written"] / first_s) / (corpus_bytes / copy_s),
             "first_over_output_tree_copy": first_s / treecopy_s if treecopy_s else None},
  "index": {"used_bytes": status["size"]["used_bytes"],
            "bytes_per_item": status["size"]["used_bytes"] / max(1, status["items"]["done"]),
            "bytes_per_delivery": status["size"]["used_bytes"] / max(1, status["deliveries"]["done"])},
}
json.dump(r, open(f"{w}/result.json", "w"), indent=1)
print(f"corpus      {r['records']:,} records, {items:,} items, {corpus_bytes/1e6:.1f} MB")
print(f"copy        {copy_s:7.2f} s  {r['copy']['MB_per_s']:8.1f} MB/s                  (cp -r + sync)")
if treecopy_s:
  print(f"tree copy   {treecopy_s:7.2f} s  {r['output_tree_copy']['MB_per_s']:8.1f} MB/s                  (cp -r + sync of the produced Maildir: the file-system floor)")
print(f"first       {first_s:7.2f} s  {r['first']['items_per_s']:8.0f} items/s {r['first']['MB_per_s']:7.1f} MB/s  "
      f"peak RSS {r['first']['peak_rss_mb']:.0f} MB  ({r['deliveries']:,} deliveries, {first['bytes_written']/1e6:.0f} MB)")
print(f"            CPU seconds: {os.environ['FIRST_CPU']}; tree copy: {os.environ['TREECOPY_CPU']}")
print(f"            at exit: {r['first']['rss_anon_mb_at_end']:.0f} MB anonymous, {r['first']['rss_file_mb_at_end']:.0f} MB file-backed (LMDB map)")
if treecopy_s:
  print(f"            first/tree copy = {r['ratios']['first_over_output_tree_copy']:.2f}x")
print(f"rerun       {rerun_s:7.2f} s  (cursors)     first/rerun  = {r['ratios']['first_over_rerun']:.0f}x")
print(f"rescan      {rescan_s:7.2f} s  {r['rescan']['items_per_s']:8.0f} items/s   first/rescan = {r['ratios']['first_over_rescan']:.1f}x"
      f"  peak RSS {r['rescan']['peak_rss_mb']:.0f} MB")
print(f"index       {r['index']['bytes_per_item']:.0f} bytes per item, {r['index']['bytes_per_delivery']:.0f} per delivery")
print(f"result      {w}/result.json")
PY
