#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): set up, build everything, run the
# whole test suite. Extra arguments go to ctest (e.g. -R Golden).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The tests run real peers: Dovecot (and mbsync) for the IMAP target, readpst
# and pffexport for PST files.
"$root/tools/setup-deps.sh" imap pst
"$root/tools/build.sh"
cd "${WXA_BUILD_DIR:-$root/build}"
ctest -j "${WXA_JOBS:-2}" --output-on-failure "$@"
