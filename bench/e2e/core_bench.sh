#!/usr/bin/env bash
# The core loop end to end (issue #9 item 5), every reference in the same run
# on the same items:
#   corpora   text-heavy (TEXT_RECORDS records, media scaled down to almost
#             nothing) and media-heavy (about MEDIA_MB of media, files at
#             their generated size, none over 10 MiB);
#   per corpus
#     null1, null2   wxarchiver import --to null: at 1 and 2 threads (read,
#                    parse, map, compose, serialize, limit, index; bytes
#                    discarded);
#     maildir1, maildir2   the same into a Maildir tree on this disk;
#     treecopy       cp -a of the tree maildir2 produced (index left out),
#                    then sync: the file-system floor for that output;
#     direct, gmime  render-only loops over the same items held in memory
#                    (bench/e2e/render_loop.cc): the direct serializer, and
#                    GMime's object model one message at a time;
#     python         Python's email building the same shape of messages
#                    (bench/e2e/py_email.py) over the first PY_ITEMS items.
# Prints items/s, MB/s, CPU seconds and peak RSS of each, then the ratios the
# issue sets targets for; writes everything to $WORK/result.json.
#
# Usage: bench/e2e/core_bench.sh            defaults: a few minutes here
#        FULL=1 bench/e2e/core_bench.sh     the issue's sizes (1,000,000 text
#                                           records, 2 GB of media): hours
# Environment: TEXT_RECORDS (default 50000), MEDIA_MB (200), PY_ITEMS (3000),
# ROUNDS (render-loop rounds, median, default 3), WORK (default
# /tmp/wxa-core-bench), WXA_BUILD_DIR (default build/; needs the targets
# wxarchiver and wxa_render_loop: ninja -C build wxarchiver wxa_render_loop),
# FRESH_FS (default 1 when root: every output step writes into one freshly
# made ext4 file system, loop-mounted at $WORK/out, where nothing is ever
# deleted; 0: into $WORK on its own file system).
#
# Why a fresh file system: ext4 does not reuse an inode freed in the last
# 60-300 s, and skipping them costs a scan per file created (recently_deleted
# in ext4_new_inode). Right after a tree of 100,000 files is deleted, creating
# the next one cost 35 s of system time instead of 8.5 here: a step that
# follows a deletion measures that, not itself.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${WXA_BUILD_DIR:-$root/build}
bin=$build/wxarchiver
loop=$build/bench/wxa_render_loop
for b in "$bin" "$loop"; do
  [[ -x "$b" ]] || { echo "core_bench: build $b first (ninja -C $build wxarchiver wxa_render_loop)" >&2; exit 2; }
done
[[ -x /usr/bin/time ]] || { echo "core_bench: needs GNU time (apt-get install time)" >&2; exit 2; }
if [[ ${FULL:-0} == 1 ]]; then
  text_records=${TEXT_RECORDS:-1000000} media_mb=${MEDIA_MB:-2048}
else
  text_records=${TEXT_RECORDS:-50000} media_mb=${MEDIA_MB:-200}
fi
py_items=${PY_ITEMS:-3000}
rounds=${ROUNDS:-3}
work=${WORK:-/tmp/wxa-core-bench}
results=$work/results.jsonl
if [[ ${REPORT_ONLY:-0} != 1 ]]; then  # REPORT_ONLY=1: print the last run's figures again
if mountpoint -q "$work/out" 2>/dev/null; then umount "$work/out"; fi
rm -rf "$work"
mkdir -p "$work/out"
: >"$results"
out=$work
if [[ ${FRESH_FS:-$([[ $(id -u) == 0 ]] && echo 1 || echo 0)} == 1 ]]; then
  command -v mkfs.ext4 >/dev/null || { echo "core_bench: FRESH_FS=1 needs mkfs.ext4 (e2fsprogs)" >&2; exit 2; }
  if [[ $(stat -f -c %T "$work") == tmpfs ]]; then
    echo "core_bench: $work is on tmpfs: the image (and every tree) would be in memory; set WORK to a disk path" >&2
    exit 2
  fi
  trap 'umount "$work/out" 2>/dev/null || true; rm -f "$work/out.img"' EXIT
  # Sparse: it takes only what the steps write (FULL=1: about 45 GB).
  truncate -s 200G "$work/out.img"
  mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$work/out.img"
  mount -o loop "$work/out.img" "$work/out"
  out=$work/out
  echo "core_bench: output steps write into a fresh ext4 file system at $out" >&2
else
  echo "core_bench: output steps write into $work (FRESH_FS=0): steps after a deletion pay ext4's scan past recently freed inodes" >&2
fi

# run CORPUS NAME CMD...: wall, peak RSS, user and system CPU of CMD into
# results.jsonl (with the JSON report's counts when CMD wrote one).
run() {
  local corpus=$1 name=$2; shift 2
  sync
  /usr/bin/time -f "%e %M %U %S" -o "$work/$corpus.$name.time" "$@" >"$work/$corpus.$name.out" 2>&1 || {
    echo "core_bench: $corpus/$name failed:" >&2
    tail -n 20 "$work/$corpus.$name.out" >&2
    exit 1
  }
  local secs kb user sys
  read -r secs kb user sys <"$work/$corpus.$name.time"
  echo "{\"corpus\": \"$corpus\", \"name\": \"$name\", \"wall_s\": $secs, \"rss_kb\": $kb, \"cpu_s\": $(python3 -c "print($user + $sys)"), \"out\": \"$work/$corpus.$name.out\", \"report\": \"$work/$corpus.$name.json\"}" >>"$results"
}

import_args() {  # CORPUS TARGET INDEX THREADS REPORT
  echo import --quiet --source "$work/$1" --directory "$work/$1/directory.csv" \
    --mapping "$work/$1/mapping.csv" --mailboxes "$work/$1/mailboxes.txt" \
    --to "$2" --index "$3" --threads "$4" --report "$5"
}

bench_corpus() {
  local c=$1
  echo "core_bench: $c: $(du -sh "$work/$c" | cut -f1) of input" >&2
  # Warm the page cache once: every step then reads the corpus from memory.
  cat "$work/$c"/*.jsonl >/dev/null
  find "$work/$c/media" -type f -exec cat {} + >/dev/null 2>&1 || true
  for t in 1 2; do
    # shellcheck disable=SC2046
    run "$c" "null$t" "$bin" $(import_args "$c" null: "$out/$c.null$t.index" "$t" "$work/$c.null$t.json")
  done
  for t in 1 2; do
    # shellcheck disable=SC2046
    run "$c" "maildir$t" "$bin" $(import_args "$c" "maildir:$out/$c.maildir$t" "$out/$c.maildir$t.index" "$t" \
      "$work/$c.maildir$t.json")
  done
  run "$c" treecopy bash -c "cp -a '$out/$c.maildir2' '$out/$c.treecopy' && sync"
  echo "{\"corpus\": \"$c\", \"name\": \"tree\", \"bytes\": $(du -sb "$out/$c.maildir2" | cut -f1), \"files\": $(find "$out/$c.maildir2" -type f | wc -l)}" >>"$results"
  if [[ $out == "$work" ]]; then
    rm -rf "$work/$c".*.index "$work/$c.maildir1" "$work/$c.maildir2" "$work/$c.treecopy"
  fi
  run "$c" renderloop "$loop" "$work/$c" "$rounds"
  run "$c" python python3 "$root/bench/e2e/py_email.py" "$work/$c" 1 "$py_items"
}

days=10
users=$(( (text_records + 20 * days - 1) / (20 * days) ))
"$bin" gen --out "$work/text" --users "$users" --days "$days" --rate 20 --seed 1 --media-scale 0.002 --clean \
  | tee "$work/text.gen" >&2
# About 125 KB of media per record at --media-scale 1 (measured): 8 records per MB.
media_records=$(( media_mb * 8 ))
users=$(( (media_records + 20 * 4 - 1) / (20 * 4) ))
"$bin" gen --out "$work/media" --users "$users" --days 4 --rate 20 --seed 2 --media-scale 1 --clean \
  | tee "$work/media.gen" >&2
bench_corpus text
bench_corpus media
fi

python3 - "$work" "$results" <<'PY'
import json, sys
work, results = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(results)]
R = {}
for r in rows:
    R.setdefault(r["corpus"], {})[r["name"]] = r
out = {"corpora": {}, "ratios": {}}
MB = 1e6
print(f"{'corpus/step':<20}{'items':>9}{'wall s':>9}{'CPU s':>9}{'items/s':>11}{'items/CPU-s':>12}{'MB/s out':>10}{'MB/s in':>9}{'peak RSS MB':>12}")
for c, steps in R.items():
    src = json.load(open(steps["null1"]["report"]))["counts"]["source_bytes"]
    res = out["corpora"][c] = {"source_bytes": src, "tree": steps["tree"]}
    for name in ("null1", "null2", "maildir1", "maildir2"):
        s = steps[name]
        counts = json.load(open(s["report"]))["counts"]
        items = counts["imported"]
        rendered = counts.get("bytes_written", 0)
        row = dict(items=items, wall_s=s["wall_s"], cpu_s=s["cpu_s"], rss_mb=s["rss_kb"] / 1024,
                   items_per_s=items / s["wall_s"], items_per_cpu_s=items / s["cpu_s"], out_mb_s=rendered / MB / s["wall_s"],
                   in_mb_s=src / MB / s["wall_s"], deliveries=counts.get("deliveries"))
        res[name] = row
    s = steps["treecopy"]
    res["treecopy"] = dict(items=res["maildir2"]["items"], wall_s=s["wall_s"], cpu_s=s["cpu_s"], rss_mb=s["rss_kb"] / 1024,
                           items_per_s=res["maildir2"]["items"] / s["wall_s"],
                           items_per_cpu_s=res["maildir2"]["items"] / max(s["cpu_s"], 1e-9),
                           out_mb_s=steps["tree"]["bytes"] / MB / s["wall_s"], in_mb_s=0)
    loop = json.loads(open(steps["renderloop"]["out"]).read().strip().splitlines()[-1])
    py = json.loads(open(steps["python"]["out"]).read().strip().splitlines()[-1])
    for name, v, proc in [("direct", loop["direct_all"], steps["renderloop"]), ("gmime", loop["gmime_all"], steps["renderloop"]),
                          ("direct_text", loop["direct_text"], steps["renderloop"]), ("gmime_text", loop["gmime_text"], steps["renderloop"]),
                          ("python", py["python_all"], steps["python"]), ("python_text", py["python_text"], steps["python"])]:
        cpu = max(v["cpu_s"], 1e-9)
        res[name] = dict(items=v["items"], wall_s=v["wall_s"], cpu_s=v["cpu_s"], rss_mb=proc["rss_kb"] / 1024,
                         items_per_s=v["items"] / max(v["wall_s"], 1e-9), items_per_cpu_s=v["items"] / cpu, out_mb_s=v["out_bytes"] / MB / cpu,
                         media_mb_s=v["media_bytes"] / MB / cpu, in_mb_s=0)
    for name, r in res.items():
        if not isinstance(r, dict) or "items" not in r:
            continue
        print(f"{c + '/' + name:<20}{r['items']:>9}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{r['items_per_s']:>11,.0f}{r['items_per_cpu_s']:>12,.0f}"
              f"{r['out_mb_s']:>10.1f}{r['in_mb_s']:>9.1f}{r['rss_mb']:>12.0f}")
print("(items/s: per wall second; MB/s: rendered output per wall second for imports and the copy, per CPU\n"
      " second for the render loops and python, whose CPU s are those of the timed loop only and whose RSS is\n"
      " the whole process with every item in memory)")

def ratio(name, a, b, target=None):
    v = a / b if b else float("nan")
    out["ratios"][name] = round(v, 3)
    t = f"  (target >= {target})" if target else ""
    print(f"  {name:<58}{v:8.2f}x{t}")

print("ratios:")
T, M = out["corpora"].get("text"), out["corpora"].get("media")
for c, r in (("text", T), ("media", M)):
    if not r:
        continue
    # Per thread: the core loop's items per CPU second at 1 thread (the
    # render loops are timed in CPU seconds too; wall clock on a shared
    # machine measures the neighbours).
    n1 = r["null1"]["items_per_cpu_s"]
    ratio(f"{c}: null:@1 items/CPU-s / GMime loop (same items)", n1, r["gmime"]["items_per_cpu_s"], 1.3 if c == "text" else None)
    ratio(f"{c}: null:@1 items/CPU-s / Python email (same items)", n1, r["python"]["items_per_cpu_s"], 25 if c == "text" else None)
    ratio(f"{c}: null:@1 items/s wall / GMime loop items/s wall", r["null1"]["items_per_s"], r["gmime"]["items_per_s"])
    ratio(f"{c}: null:@2 / null:@1 items/s (wall)", r["null2"]["items_per_s"], r["null1"]["items_per_s"], 1.8 if c == "text" else None)
    ratio(f"{c}: direct serializer / GMime loop, render only (CPU)", r["direct"]["items_per_cpu_s"], r["gmime"]["items_per_cpu_s"])
    ratio(f"{c}: direct / GMime, text items only, render only (CPU)", r["direct_text"]["items_per_cpu_s"], r["gmime_text"]["items_per_cpu_s"])
    ratio(f"{c}: direct / Python email, text items only (CPU)", r["direct_text"]["items_per_cpu_s"], r["python_text"]["items_per_cpu_s"])
    ratio(f"{c}: maildir@1 wall / (cp -a + sync) wall", r["maildir1"]["wall_s"], r["treecopy"]["wall_s"])
    ratio(f"{c}: maildir@2 wall / (cp -a + sync) wall (target <= 1.5)", r["maildir2"]["wall_s"], r["treecopy"]["wall_s"])
if M:
    print(f"  media: attachment bytes through render: direct {M['direct']['media_mb_s']:.0f} MB/s, "
          f"GMime {M['gmime']['media_mb_s']:.0f} MB/s per CPU second (target >= 1500 MB/s and >= 3x)")
    ratio("media: direct / GMime attachment MB/s", M["direct"]["media_mb_s"], M["gmime"]["media_mb_s"], 3)
json.dump(out, open(f"{work}/result.json", "w"), indent=2)
print(f"(all figures: {work}/result.json)")
PY
