#!/usr/bin/env bash
# Installs missing packages, configures (once) and builds wxarchiver into build/.
# Usage: tools/build.sh [cmake --build target...]
# WXA_BUILD_DIR and WXA_BUILD_TYPE override the build directory and type.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/setup-deps.sh"

build_dir=${WXA_BUILD_DIR:-$root/build}
build_type=${WXA_BUILD_TYPE:-RelWithDebInfo}
if [[ ! -f "$build_dir/build.ninja" ]]; then
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" >/dev/null
fi
# Two cores and heavy headers: two jobs keep memory and the machine sane.
targets=()
for t in "$@"; do targets+=(--target "$t"); done
if ! cmake --build "$build_dir" -j "${WXA_JOBS:-2}" "${targets[@]}" >"$build_dir/build.log" 2>&1; then
  grep -vE '^\[[0-9]+/[0-9]+\] ' "$build_dir/build.log" | tail -n 80 >&2
  echo "build failed; full log: $build_dir/build.log" >&2
  exit 1
fi
