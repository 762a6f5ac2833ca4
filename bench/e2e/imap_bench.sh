#!/usr/bin/env bash
# IMAP upload benchmark (issue #7), three clients on the same items in one
# run, each into a fresh private Dovecot (tests/imap's wxa_dovecot, plain
# IMAP on loopback, STORAGE=mdbox by default):
#   1. wxarchiver import from the WeCom JSON corpus (parse, map, render,
#      index, upload: the whole engine) to imap://;
#   2. mbsync pushing the pre-rendered Maildir tree (one channel per mailbox);
#   3. wxa_multiappend_replay pushing the same pre-rendered bytes with raw
#      MULTIAPPEND batches (the practical ceiling).
# Each is timed with GNU time (wall, user+sys CPU, peak RSS); each Dovecot is
# checked to hold every message. Prints items/s, MB/s, CPU per item, peak
# RSS and the ratios, and writes $WORK/result.json.
#   RECORDS=100000 STORAGE=mdbox CONNECTIONS=16 bench/e2e/imap_bench.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
records=${RECORDS:-100000}
storage=${STORAGE:-mdbox}
connections=${CONNECTIONS:-16}
work=${WORK:-/tmp/wxa-imap-bench-$records}
build=${WXA_BUILD_DIR:-$root/build}
bin=$build/wxarchiver
dovecot_bin=$build/tests/imap/wxa_dovecot
replay_bin=$build/bench/imap/wxa_multiappend_replay
for b in "$bin" "$dovecot_bin" "$replay_bin"; do
  [[ -x $b ]] || { echo "imap_bench: $b not built (tools/build.sh)" >&2; exit 2; }
done
command -v mbsync >/dev/null || { echo "imap_bench: needs mbsync (tools/setup-deps.sh imap)" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "imap_bench: needs GNU time" >&2; exit 2; }

rm -rf "$work"
mkdir -p "$work"
dovecot_pid=""
cleanup() { [[ -n $dovecot_pid ]] && kill -TERM "$dovecot_pid" 2>/dev/null && wait "$dovecot_pid" 2>/dev/null || true; }
trap cleanup EXIT

# Text-heavy corpus over USERS employees (default 16: 8+ mailboxes once the
# unmapped ones are left out), RECORDS records over 10 days.
days=10
users=${USERS:-16}
rate=$(( (records + users * days - 1) / (users * days) ))
"$bin" gen --out "$work/corpus" --users "$users" --days "$days" --rate "$rate" --seed 5 \
  --media-scale "${MEDIA_SCALE:-0.002}" --clean >/dev/null
c=$work/corpus
# The pre-rendered tree the other two clients push (same items, same bytes).
"$bin" import --quiet --source "$c" --directory "$c/directory.csv" --mapping "$c/mapping.csv" \
  --mailboxes "$c/mailboxes.txt" --to "maildir:$work/tree" --report "$work/tree.json"
messages=$(find "$work/tree" -path '*/.WeChat Archiver/cur/*' -type f | wc -l)
bytes=$(find "$work/tree" -path '*/.WeChat Archiver/cur/*' -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
mailboxes=$(find "$work/tree" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | wc -l)
echo "corpus: $messages messages ($((bytes / 1000000)) MB) in $mailboxes mailboxes" >&2

start_dovecot() {
  rm -f "$work/dovecot.json"
  "$dovecot_bin" --storage "$storage" --no-tls --users-from "$work/tree" --max-userip 256 \
    >"$work/dovecot.json" 2>"$work/dovecot.err" &
  dovecot_pid=$!
  for _ in $(seq 400); do
    [[ -s $work/dovecot.json ]] && break
    kill -0 "$dovecot_pid" 2>/dev/null || { cat "$work/dovecot.err" >&2; exit 1; }
    sleep 0.05
  done
  read -r port master_user master_pw < <(python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); print(d["imap_port"], d["master_user"], d["master_password"])' "$work/dovecot.json")
  printf '%s\n' "$master_pw" >"$work/master.secret"
}
stop_dovecot() { kill -TERM "$dovecot_pid"; wait "$dovecot_pid" || true; dovecot_pid=""; }

# Messages in every mailbox's folder, from the server (the run must be complete).
check_count() {
  local name=$1 got
  got=$(python3 - "$port" "$master_user" "$master_pw" "$work/tree" <<'EOF'
import imaplib, os, sys
port, mu, mp, tree = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
total = 0
for mb in sorted(os.listdir(tree)):
    if mb.startswith('.') or not os.path.isdir(os.path.join(tree, mb)): continue
    c = imaplib.IMAP4('127.0.0.1', port)
    c.login(f'{mb}*{mu}', mp)
    typ, data = c.status('"WeChat Archiver"', '(MESSAGES)')
    total += int(data[0].split()[-1].rstrip(b')'))
    c.logout()
print(total)
EOF
)
  if [[ $got != "$messages" ]]; then echo "imap_bench: $name left $got of $messages messages" >&2; exit 1; fi
}

# run NAME CMD...: wall seconds, peak RSS (KB), user and sys CPU seconds.
run() {
  local name=$1; shift
  /usr/bin/time -f "%e %M %U %S" -o "$work/$name.time" "$@" >"$work/$name.out" 2>&1 || {
    echo "imap_bench: $name failed:" >&2; tail -20 "$work/$name.out" >&2; exit 1; }
  read -r "${name}_s" "${name}_kb" "${name}_user" "${name}_sys" <"$work/$name.time"
  echo "$name: $(cat "$work/$name.time") (wall s, peak KB, user s, sys s)" >&2
}

# 1. wxarchiver, from the JSON records.
start_dovecot
run ours "$bin" import --quiet --source "$c" --directory "$c/directory.csv" --mapping "$c/mapping.csv" \
  --mailboxes "$c/mailboxes.txt" --to "imap://127.0.0.1:$port" --index "$work/index" \
  --imap-master "$master_user" --imap-secret-file "$work/master.secret" --connections "$connections" \
  --report "$work/ours.json"
check_count ours
stop_dovecot

# 2. mbsync, one channel per mailbox, pushing the Maildir tree (dates kept).
start_dovecot
cfg=$work/mbsyncrc
: >"$cfg"
mkdir -p "$work/mbsync-state"
for mb in $(find "$work/tree" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n' | sort); do
  n=$(echo "$mb" | tr -c 'a-zA-Z0-9\n' '_')
  cat >>"$cfg" <<EOF
IMAPAccount a_$n
Host 127.0.0.1
Port $port
User "$mb*$master_user"
Pass "$master_pw"
SSLType None
AuthMechs LOGIN

IMAPStore far_$n
Account a_$n

MaildirStore near_$n
Inbox $work/tree/$mb/
SubFolders Maildir++

Channel c_$n
Far :far_$n:
Near :near_$n:
Patterns "WeChat Archiver"
Create Far
Sync Push New
Expunge None
CopyArrivalDate yes
SyncState $work/mbsync-state/$n.

EOF
done
run mbsync mbsync -c "$cfg" -a -q
check_count mbsync
stop_dovecot

# 3. raw MULTIAPPEND replay of the same bytes.
start_dovecot
run replay "$replay_bin" --root "$work/tree" --port "$port" --master "$master_user:$master_pw" \
  --connections "${REPLAY_CONNECTIONS:-$mailboxes}" --batch 100
check_count replay
stop_dovecot

python3 - "$work" "$messages" "$bytes" "$mailboxes" "$storage" \
  "$ours_s" "$ours_kb" "$ours_user" "$ours_sys" \
  "$mbsync_s" "$mbsync_kb" "$mbsync_user" "$mbsync_sys" \
  "$replay_s" "$replay_kb" "$replay_user" "$replay_sys" <<'EOF'
import json, sys
work, n, b, boxes, storage = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
v = list(map(float, sys.argv[6:]))
rows = {}
for i, name in enumerate(["wxarchiver (from JSON)", "mbsync (pre-rendered)", "raw MULTIAPPEND replay"]):
    s, kb, u, sy = v[4*i:4*i+4]
    rows[name] = {"seconds": s, "items_per_s": n / s, "mb_per_s": b / 1e6 / s,
                  "cpu_s": u + sy, "cpu_us_per_item": (u + sy) * 1e6 / n, "peak_rss_mb": kb / 1024}
ours, mb, rp = (rows[k]["items_per_s"] for k in rows)
print(f"IMAP upload into Dovecot ({storage}), {n} messages, {b/1e6:.0f} MB, {boxes} mailboxes")
print(f"{'client':28} {'s':>8} {'items/s':>9} {'MB/s':>7} {'CPU s':>7} {'us/item':>8} {'RSS MB':>7}")
for k, r in rows.items():
    print(f"{k:28} {r['seconds']:8.2f} {r['items_per_s']:9.0f} {r['mb_per_s']:7.1f} {r['cpu_s']:7.2f} "
          f"{r['cpu_us_per_item']:8.1f} {r['peak_rss_mb']:7.1f}")
print(f"ratios: wxarchiver / mbsync = {ours/mb:.2f}x, wxarchiver / replay = {ours/rp:.2f}x")
json.dump({"messages": n, "bytes": b, "mailboxes": boxes, "storage": storage, "clients": rows,
           "ours_vs_mbsync": ours / mb, "ours_vs_replay": ours / rp},
          open(f"{work}/result.json", "w"), indent=1)
EOF
