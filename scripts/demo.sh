#!/usr/bin/env bash
# Sluice's main job, end to end: the appliance between two network
# namespaces, on its embedded default config (net_tap ports sl-sub/sl-up,
# one worker, no hugepages), with real kernel traffic through it:
# ping, an iperf3 TCP run, and a socat transfer checked by sha256, while a
# tcpdump on the far side watches. Live counters print every second; the
# final per-port/per-worker report and the mempool check print at the end.
# Needs root. Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet --bin sluice

NS_SUB=sluice-demo-sub NS_UP=sluice-demo-up
A=198.18.0.1 B=198.18.0.2
work=$(mktemp -d)
sluice_pid=""
cleanup() {
  [ -n "$sluice_pid" ] && kill -INT "$sluice_pid" 2>/dev/null && wait "$sluice_pid" 2>/dev/null || true
  ip netns pids "$NS_UP" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns pids "$NS_SUB" 2>/dev/null | xargs -r kill 2>/dev/null || true
  scripts/netns.sh down "$NS_SUB" "$NS_UP"
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n=== %s\n' "$*"; }

step "starting sluice (embedded default config)"
./target/release/sluice --stats-interval 1 --ready-file "$work/ready" &
sluice_pid=$!
READY_FILE="$work/ready" scripts/netns.sh up "$NS_SUB" sl-sub "$A/24" "$NS_UP" sl-up "$B/24"
echo "subscriber host $A in netns $NS_SUB  <->  sluice  <->  upstream host $B in netns $NS_UP"

ip netns exec "$NS_UP" tcpdump -i sl-up -nn -U -w "$work/far.pcap" 2>/dev/null &
sleep 1

step "ping through the appliance"
ip netns exec "$NS_SUB" ping -c 3 -i 0.2 -W 2 "$B"

step "iperf3 TCP, 3 s"
ip netns exec "$NS_UP" iperf3 -s -1 -B "$B" >/dev/null &
sleep 0.5
ip netns exec "$NS_SUB" iperf3 -c "$B" -t 3 -f m | grep -E 'sender|receiver'

step "socat transfer of 8 MiB, sha256 compared"
head -c 8M /dev/urandom >"$work/sent"
ip netns exec "$NS_UP" socat -u TCP-LISTEN:5001,bind=$B,reuseaddr OPEN:"$work/received",creat,trunc &
rx_pid=$!
sleep 0.5
ip netns exec "$NS_SUB" socat -u OPEN:"$work/sent" TCP:$B:5001
wait "$rx_pid"
sent=$(sha256sum <"$work/sent" | cut -d' ' -f1)
got=$(sha256sum <"$work/received" | cut -d' ' -f1)
echo "sent     $sent"
echo "received $got"
[ "$sent" = "$got" ] || { echo "demo: transfer corrupted" >&2; exit 1; }

sleep 0.5
ip netns pids "$NS_UP" | xargs -r kill -INT 2>/dev/null || true
sleep 0.5
step "tcpdump on the upstream side saw"
tcpdump -nn -r "$work/far.pcap" 2>/dev/null | awk '{ if ($0 ~ /ICMP echo request/) p++; else if ($0 ~ /Flags/) t++ } END { printf "  %d ICMP echo requests, %d TCP segments\n", p, t }'

step "stopping sluice (SIGINT): final counters"
kill -INT "$sluice_pid"
wait "$sluice_pid"
sluice_pid=""
