#!/usr/bin/env bash
# Measures the MULTIAPPEND ceiling: starts a private Dovecot (wxa_dovecot)
# per storage with one user per mailbox of the tree, runs
# wxa_multiappend_replay against it with the master user, stops Dovecot,
# and prints one JSON line per run (the storage added).
#
#   bench/imap/run_replay.sh [--storage mdbox|maildir|both] [--root DIR]
#                            [--synthetic MESSAGES,BYTES,MAILBOXES] [-- replay args...]
#
# Default: --storage both --synthetic 20000,4096,8 -- --connections 8 --batch 100
# WXA_BUILD_DIR selects the build (default build/); the targets wxa_dovecot
# and wxa_multiappend_replay must be built there.
set -euo pipefail
root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${WXA_BUILD_DIR:-$root_dir/build}
dovecot_bin=$build/tests/imap/wxa_dovecot
replay_bin=$build/bench/imap/wxa_multiappend_replay
for b in "$dovecot_bin" "$replay_bin"; do
  [[ -x $b ]] || { echo "run_replay: $b not built (tools/build.sh wxa_dovecot wxa_multiappend_replay)" >&2; exit 2; }
done

storages=(mdbox maildir)
tree=""
synthetic="20000,4096,8"
replay_args=(--connections 8 --batch 100)
while [[ $# -gt 0 ]]; do
  case $1 in
    --storage) [[ $2 == both ]] && storages=(mdbox maildir) || storages=("$2"); shift 2 ;;
    --root) tree=$2; synthetic=""; shift 2 ;;
    --synthetic) synthetic=$2; tree=""; shift 2 ;;
    --) shift; replay_args=("$@"); break ;;
    *) echo "run_replay: unknown argument $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/wxa-replay-XXXXXX")
dovecot_pid=""
cleanup() {
  [[ -n $dovecot_pid ]] && kill -TERM "$dovecot_pid" 2>/dev/null && wait "$dovecot_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -n $synthetic ]]; then
  IFS=, read -r n size boxes <<<"$synthetic"
  tree=$work/tree
  python3 "$root_dir/bench/imap/make_maildir.py" "$tree" --messages "$n" --size "$size" --mailboxes "$boxes" >&2
fi

for storage in "${storages[@]}"; do
  "$dovecot_bin" --storage "$storage" --no-tls --users-from "$tree" >"$work/dovecot.json" 2>"$work/dovecot.err" &
  dovecot_pid=$!
  for _ in $(seq 200); do
    [[ -s $work/dovecot.json ]] && break
    kill -0 "$dovecot_pid" 2>/dev/null || { cat "$work/dovecot.err" >&2; exit 1; }
    sleep 0.05
  done
  port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["imap_port"])' "$work/dovecot.json")
  master=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["master_user"]+":"+d["master_password"])' "$work/dovecot.json")
  echo "== $storage: Dovecot on 127.0.0.1:$port" >&2
  out=$("$replay_bin" --root "$tree" --port "$port" --master "$master" --verify "${replay_args[@]}")
  echo "${out%\}},\"storage\":\"$storage\"}"
  kill -TERM "$dovecot_pid"
  wait "$dovecot_pid" || true
  dovecot_pid=""
done
