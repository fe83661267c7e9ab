#!/usr/bin/env bash
# Install snmp-watchdog and watch it work: a demo mail server on loopback is
# checked every 2 seconds; the script stops the server, lets the watchdog
# confirm it DOWN, starts it again and lets the watchdog confirm it UP.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

ensure_venv fast
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work" "$log_file"
}
trap cleanup EXIT

sed -e "s|@STATE_DIR@|$work|g" examples/demo.yaml >"$work/watchdog.yaml"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

start_server() {
    .venv/bin/python examples/demo_smtp.py 2525 &
    server_pid=$!
    pids+=("$server_pid")
}

say "watchdog check-config"
.venv/bin/watchdog -c "$work/watchdog.yaml" check-config
say "watchdog probe demo-mail -v (the server is not running yet)"
.venv/bin/watchdog -c "$work/watchdog.yaml" probe demo-mail -v || true
start_server
sleep 0.5
say "watchdog probe demo-mail -v"
.venv/bin/watchdog -c "$work/watchdog.yaml" probe demo-mail -v
say "watchdog run (the demo mail server is up)"
.venv/bin/watchdog -c "$work/watchdog.yaml" run &
pids+=("$!")
watchdog_pid=$!
sleep 6
say "stopping the demo mail server"
kill "$server_pid"
sleep 6
say "status files: $(cd "$work/status" && grep -H . ./* | tr '\n' ' ')"
say "starting the demo mail server again"
start_server
sleep 6
say "status files: $(cd "$work/status" && grep -H . ./* | tr '\n' ' ')"
say "stopping the watchdog"
kill -TERM "$watchdog_pid"
wait "$watchdog_pid" || true
