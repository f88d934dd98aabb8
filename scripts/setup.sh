#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, run and test Sluice.
# Idempotent: installs only missing packages. Needs root (or sudo).
set -euo pipefail

PKGS=(
  dpdk dpdk-dev libdpdk-dev dpdk-doc   # DPDK 22.11: libraries, PMDs, testpmd, examples (qos_sched)
  clang libclang-dev pkg-config        # bindgen and the C shim
  iproute2 tcpdump tshark iperf3 socat # namespaces and real peers for tests and the demo
  iputils-ping procps psmisc           # ping, pgrep/pkill, killall
  dnsmasq-base bind9-dnsutils          # a DNS server and dig for hostname-scoped coupons
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer "no" up front.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections || true
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: cargo not found. Install a Rust toolchain >= 1.79 (rustup) and re-run." >&2
    exit 1
  fi
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
pkg-config --exists libdpdk || { echo "setup: pkg-config cannot find libdpdk" >&2; exit 1; }
echo "setup: ok (DPDK $(pkg-config --modversion libdpdk), $(cargo --version))"
