#!/usr/bin/env bash
# Install snmp-watchdog and watch it work, end to end: a demo mail server on
# loopback is checked every 2 seconds; a private Net-SNMP snmptrapd receives
# the notifications and prints them with the names of the bundled MIB. The
# script stops the mail server (the watchdog confirms it DOWN and traps), starts
# it again (confirmed UP, trapped), shows `watchdog status`, and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

ensure_debs snmptrapd snmp
ensure_venv fast
bash scripts/ietf-mibs.sh .cache/ietf-mibs

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work" "$log_file"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_udp_port() {
    .venv/bin/python -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

trap_port=$(free_udp_port)
sed -e "s|@STATE_DIR@|$work|g" -e "s|@TRAP_PORT@|$trap_port|g" examples/demo.yaml >"$work/watchdog.yaml"
watchdog() { .venv/bin/watchdog -c "$work/watchdog.yaml" "$@"; }

# A private receiver: its own configuration, its own persistent directory.
printf 'authCommunity log public\n' >"$work/snmptrapd.conf"
mkdir -p "$work/snmptrapd"
SNMP_PERSISTENT_DIR="$work/snmptrapd" snmptrapd -f -Lo -C -c "$work/snmptrapd.conf" \
    -M "$PWD/.cache/ietf-mibs:$PWD/mibs" -m SNMPv2-MIB:SNMP-WATCHDOG-MIB \
    "udp:127.0.0.1:$trap_port" > >(sed -u 's/^/   snmptrapd: /') 2>&1 &
pids+=("$!")

start_server() {
    .venv/bin/python examples/demo_smtp.py 2525 &
    server_pid=$!
    pids+=("$server_pid")
    sleep 0.3
}

say "watchdog check-config"
watchdog check-config
say "watchdog test-trap: prove the path to the receiver"
sleep 0.5
watchdog test-trap
sleep 0.3
start_server
say "watchdog probe demo-mail -v: one check now, with the conversation"
watchdog probe demo-mail -v
say "watchdog run (the demo mail server is up)"
.venv/bin/watchdog -c "$work/watchdog.yaml" run &
watchdog_pid=$!
pids+=("$watchdog_pid")
sleep 6
say "stopping the demo mail server"
kill "$server_pid"
sleep 6
say "status files: $(cd "$work/status" && grep -H . ./* | tr '\n' ' ')"
say "starting the demo mail server again"
start_server
sleep 6
say "watchdog status"
watchdog status
say "stopping the watchdog"
kill -TERM "$watchdog_pid"
wait "$watchdog_pid" || true
