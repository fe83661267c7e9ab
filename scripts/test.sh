#!/usr/bin/env bash
# Install everything the tests need on a Debian machine, then run them:
# Debian packages (Net-SNMP's snmptrapd/snmptranslate, smilint, strace to count
# what a check reads, Zabbix with PostgreSQL and its PHP frontend for
# tests/zabbix/), the IETF base
# MIB texts, a virtualenv with the package and its test tools; then ruff,
# mypy --strict and pytest (with the state machine's branch coverage at 100%);
# then the tests that exercise the runtime dependencies again, in .venv-min,
# against the oldest versions pyproject.toml admits (constraints/minimum.txt).
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

ensure_debs snmptrapd snmpd snmp smitools systemd strace postgresql "${ZABBIX_DEBS[@]}"
ensure_venv test,fast,postgresql
ensure_min_venv test,fast,postgresql
bash scripts/ietf-mibs.sh .cache/ietf-mibs
export WATCHDOG_IETF_MIBS="$PWD/.cache/ietf-mibs"

step "ruff check" .venv/bin/ruff check --quiet src tests bench contrib
step "ruff format" .venv/bin/ruff format --check --quiet src tests bench contrib
step "mypy --strict" .venv/bin/mypy --no-error-summary

rc=0
# Everything, the live Zabbix tests included (a plain `pytest` leaves them out).
.venv/bin/pytest -q -p no:cacheprovider -m "zabbix or not zabbix" \
    --cov --cov-branch --cov-report= "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
# The pure state machine is fully covered by its own tests, branch by branch.
.venv/bin/coverage report --include='*/snmp_watchdog/state.py' --fail-under=100 \
    --show-missing --skip-covered >/dev/null || {
    .venv/bin/coverage report --include='*/snmp_watchdog/state.py' --show-missing
    echo "the state machine is not fully covered" >&2
    exit 1
}

# The declared floors: everything that drives pysnmp, cryptography, tenacity,
# PyYAML, pydantic and uvloop, with each at its lowest admitted version.
[ "$#" -eq 0 ] || exit 0 # a selection of tests (-k ...) is for the main run only
.venv-min/bin/pytest -q -p no:cacheprovider \
    tests/test_sender.py tests/test_dispatcher.py tests/test_engine_files.py \
    tests/test_config.py tests/config tests/test_cli.py \
    tests/test_e2e_snmp.py tests/test_receiver_dns.py tests/test_restart.py \
    tests/test_outage.py tests/test_daemon.py tests/test_reload.py \
    tests/test_agent.py tests/test_agent_bulk.py tests/test_store_pg.py || {
    echo "the tests fail with the oldest dependencies of constraints/minimum.txt" >&2
    exit 1
}
