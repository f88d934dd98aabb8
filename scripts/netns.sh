#!/usr/bin/env bash
# Network-namespace topology for Sluice's tap ports, used by tests and the demo.
#
#   netns.sh up NS_A IF_A ADDR_A NS_B IF_B ADDR_B [TIMEOUT_S]
#       Waits for the tap interfaces IF_A and IF_B (created by a running
#       sluice with net_tap ports) to appear, moves each into its own new
#       namespace, assigns the addresses (CIDR, e.g. 198.18.0.1/24) and sets
#       the links and loopback up. The two hosts then talk only through Sluice.
#   netns.sh down NS_A NS_B
#       Deletes the namespaces (the taps go with them or back to sluice).
#
# With READY_FILE set, `up` first waits for that file (sluice --ready-file):
# the tap PMD configures its kernel interface by name in sluice's own
# namespace while the port starts, so a tap moved away before then breaks
# the start.
#
# Addresses: use 198.18.0.0/15 (RFC 2544, reserved for benchmarking network
# devices); it never leaves these namespaces.
set -euo pipefail

wait_if() {
  local ifname=$1 timeout=$2 i=0
  while ! ip link show "$ifname" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt $((timeout * 10)) ]; then
      echo "netns: interface $ifname did not appear within ${timeout}s (is sluice running?)" >&2
      return 1
    fi
    sleep 0.1
  done
}

host_up() {
  local ns=$1 ifname=$2 addr=$3
  ip netns add "$ns"
  ip link set "$ifname" netns "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr" dev "$ifname"
  # No IPv6 DAD delay: tests start talking at once.
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 "net.ipv6.conf.$ifname.accept_dad=0" || true
  ip -n "$ns" link set "$ifname" up
}

case "${1:-}" in
  up)
    [ $# -ge 7 ] || { echo "usage: $0 up NS_A IF_A ADDR_A NS_B IF_B ADDR_B [TIMEOUT_S]" >&2; exit 2; }
    timeout=${8:-20}
    if [ -n "${READY_FILE:-}" ]; then
      i=0
      while [ ! -e "$READY_FILE" ]; do
        i=$((i + 1))
        if [ "$i" -gt $((timeout * 10)) ]; then
          echo "netns: $READY_FILE did not appear within ${timeout}s (did sluice fail to start?)" >&2
          exit 1
        fi
        sleep 0.1
      done
    fi
    wait_if "$3" "$timeout"
    wait_if "$6" "$timeout"
    host_up "$2" "$3" "$4"
    host_up "$5" "$6" "$7"
    ;;
  down)
    [ $# -ge 3 ] || { echo "usage: $0 down NS_A NS_B" >&2; exit 2; }
    for ns in "$2" "$3"; do ip netns del "$ns" 2>/dev/null || true; done
    ;;
  *)
    echo "usage: $0 up NS_A IF_A ADDR_A NS_B IF_B ADDR_B [TIMEOUT_S] | down NS_A NS_B" >&2
    exit 2
    ;;
esac
