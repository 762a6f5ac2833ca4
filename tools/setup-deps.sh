#!/usr/bin/env bash
# Installs the Debian 12 packages wxarchiver builds and tests with.
# Idempotent: prints nothing and installs nothing when everything is present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config python3
  libgmime-3.0-dev libsimdjson-dev libcli11-dev libfmt-dev libspdlog-dev
  libssl-dev liblmdb-dev lmdb-utils time libtbb-dev libboost-dev libcurl4-openssl-dev
  libtomlplusplus-dev libphonenumber-dev libisal-dev libjemalloc-dev
  libgtest-dev libgmock-dev libbenchmark-dev
)
# Extra groups, asked for by name: tools/setup-deps.sh imap pst perf
for extra in "$@"; do
  case "$extra" in
    imap) packages+=(dovecot-imapd dovecot-core isync) ;;
    pst) packages+=(pst-utils pff-tools) ;;
    perf) packages+=(valgrind) ;;  # bench/perf_gate.sh (callgrind)
    *) echo "setup-deps: unknown group '$extra'" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "setup-deps: installing ${missing[*]}" >&2
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup-deps: need root or sudo to install packages" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() { "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/wxa-apt.log 2>&1; }
if ! apt_install; then
  # A fresh machine may have stale or empty package lists.
  "${sudo[@]}" apt-get update -q >/tmp/wxa-apt-update.log 2>&1 || true
  apt_install || { tail -n 30 /tmp/wxa-apt.log >&2; exit 1; }
fi
