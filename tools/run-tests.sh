#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): set up, build everything, run the
# whole test suite. Extra arguments go to ctest (e.g. -R Golden).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/build.sh"
cd "${WXA_BUILD_DIR:-$root/build}"
ctest -j "${WXA_JOBS:-2}" --output-on-failure "$@"
