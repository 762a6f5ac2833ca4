#!/usr/bin/env bash
# README command 1: set up, build, and run the main job on the bundled sample.
# Generates a small synthetic WeCom corpus (once) under out/sample/corpus,
# imports it into out/sample/maildir and prints the summary; the JSON report
# goes to out/sample/report.json. Running it again shows the resume path:
# everything is already present and nothing is written.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/build.sh" wxarchiver
bin=${WXA_BUILD_DIR:-$root/build}/wxarchiver
out=${1:-$root/out/sample}
if [[ ! -f "$out/corpus/directory.csv" ]]; then
  "$bin" gen --out "$out/corpus" --users 25 --days 3 --seed 1 --media-scale 0.05
fi
"$bin" import --source "$out/corpus" \
  --directory "$out/corpus/directory.csv" \
  --mapping "$out/corpus/mapping.csv" \
  --mailboxes "$out/corpus/mailboxes.txt" \
  --to "maildir:$out/maildir" \
  --report "$out/report.json"
