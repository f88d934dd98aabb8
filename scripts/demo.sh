#!/usr/bin/env bash
# Sluice's main job, end to end: the appliance between two network
# namespaces, on its embedded default config (net_tap ports sl-sub/sl-up,
# one worker, no hugepages, the upstream egress shaped to 50 Mbit/s), with
# real kernel traffic through it: ping, an iperf3 TCP run, a socat transfer
# checked by sha256 while a tcpdump on the far side watches, then two TCP
# flows through the shaped egress, both best effort, until part-way through
# the operator issues a signed priority coupon (sluicectl coupon issue) and
# the subscriber's client redeems it in band (sluice-client redeem, a UDP
# packet through the appliance): that flow moves to the premium level, with
# pings beside each. Live counters print every second,
# per priority level on the shaped egress (throughput, queueing delay,
# drops); the final report, the per-level summary and the mempool check
# print at the end.
# Needs root. Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet --bin sluice --bin sluicectl --bin sluice-client

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
# The embedded config, with the control socket and policy store in $work so
# the demo leaves nothing behind.
./target/release/sluice --print-default-config |
  sed -e "s|^socket = .*|socket = \"$work/control.sock\"|" \
      -e "s|^state_dir = .*|state_dir = \"$work/state\"|" >"$work/sluice.toml"
./target/release/sluice --config "$work/sluice.toml" --stats-interval 1 --ready-file "$work/ready" &
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

step "a signed coupon redeemed part-way through two flows on the egress shaped to 50 Mbit/s"
P=198.18.0.11
ip -n "$NS_SUB" addr add "$P/24" dev sl-sub
ctl() { ./target/release/sluicectl --socket "$work/control.sock" "$@"; }
client() { ip netns exec "$NS_SUB" ./target/release/sluice-client --dir "$work/client" "$@"; }
levels() { # packets per level so far, from the appliance's counters
  ctl stats | sed -n 's/^packets per level: //p'
}
ctl coupon keygen
ctl coupon issue --id demo-premium --customer demo-subscriber --level 3 --dscp 46 \
  --basis transaction --amount 199 --valid-for 3600 --out "$work/demo-premium.coupon.json"
client install "$work/demo-premium.coupon.json"
ip netns exec "$NS_UP" iperf3 -s -1 -p 5201 >/dev/null &
ip netns exec "$NS_UP" iperf3 -s -1 -p 5202 >/dev/null &
sleep 0.5
idle=$(ip netns exec "$NS_SUB" ping -c 5 -i 0.2 -I "$P" "$B" | awk -F/ '/min\/avg/ {print $5}')
ip netns exec "$NS_SUB" iperf3 -c "$B" -p 5201 -B "$A" -t 12 -f m >"$work/bulk.txt" &
bulk_pid=$!
ip netns exec "$NS_SUB" iperf3 -c "$B" -p 5202 -B "$P" -t 12 -f m -i 2 >"$work/premium.txt" &
prem_pid=$!
sleep 2
before_rtt=$(ip netns exec "$NS_SUB" ping -c 10 -i 0.2 -I "$P" "$B" | awk -F/ '/min\/avg/ {print $5}')
echo "  before the coupon: $(levels)"
step "sluice-client redeems the coupon in band from $P"
client redeem demo-premium --via "$B:7466" --src "$P"
echo "  just after:        $(levels)"
sleep 2
prem_rtt=$(ip netns exec "$NS_SUB" ping -c 10 -i 0.2 -I "$P" "$B" | awk -F/ '/min\/avg/ {print $5}')
be_rtt=$(ip netns exec "$NS_SUB" ping -c 10 -i 0.2 -I "$A" "$B" | awk -F/ '/min\/avg/ {print $5}')
wait "$bulk_pid" "$prem_pid"
echo "  after:             $(levels)"
echo "  bulk (best effort, $A):  $(awk '/receiver/ {print $7, $8}' "$work/bulk.txt")"
echo "  coupon holder ($P), per 2 s:"
awk '/sec/ && !/sender|receiver/ {print "    " $3 " s  " $7 " " $8}' "$work/premium.txt"
echo "  ping RTT from $P: idle $idle ms; under load before the coupon $before_rtt ms, after $prem_rtt ms (best effort $be_rtt ms)"
ctl coupon list

sleep 0.5
ip netns pids "$NS_UP" | xargs -r kill -INT 2>/dev/null || true
sleep 0.5
step "tcpdump on the upstream side saw"
tcpdump -nn -r "$work/far.pcap" 2>/dev/null | awk '{ if ($0 ~ /ICMP echo request/) p++; else if ($0 ~ /Flags/) t++ } END { printf "  %d ICMP echo requests, %d TCP segments\n", p, t }'

step "stopping sluice (SIGINT): final counters"
kill -INT "$sluice_pid"
wait "$sluice_pid"
sluice_pid=""
