#!/usr/bin/env bash
# Prove contrib/zabbix against a real Zabbix 6.0 (Debian's packages): install
# zabbix-server-pgsql, PostgreSQL, the PHP frontend (its JSON-RPC API) and
# snmptrapd when missing, then run the tests marked `zabbix`
# (tests/zabbix/): a throwaway database, server and API on loopback ports, the
# template imported, real notifications from `watchdog run` through snmptrapd
# and contrib/zabbix/zabbix_trap_receiver.py, and low-level discovery of the
# service table polled from the watchdog's agent. Nothing is configured
# system-wide and nothing is left running. scripts/test.sh runs these too.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

ensure_debs "${ZABBIX_DEBS[@]}"
ensure_venv test,fast
bash scripts/ietf-mibs.sh .cache/ietf-mibs
export WATCHDOG_IETF_MIBS="$PWD/.cache/ietf-mibs"

rc=0
.venv/bin/pytest -q -p no:cacheprovider -m zabbix tests/zabbix "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
