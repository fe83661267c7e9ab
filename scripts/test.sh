#!/usr/bin/env bash
# Install everything the tests need on a Debian machine, then run them:
# Debian packages (Net-SNMP's snmptrapd/snmptranslate, smilint), the IETF base
# MIB texts, a virtualenv with the package and its test tools; then ruff,
# mypy --strict and pytest (with the state machine's branch coverage at 100%).
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

ensure_debs snmptrapd snmp smitools systemd postgresql
ensure_venv test,fast,postgresql
bash scripts/ietf-mibs.sh .cache/ietf-mibs
export WATCHDOG_IETF_MIBS="$PWD/.cache/ietf-mibs"

step "ruff check" .venv/bin/ruff check --quiet src tests bench contrib
step "ruff format" .venv/bin/ruff format --check --quiet src tests bench contrib
step "mypy --strict" .venv/bin/mypy --no-error-summary

rc=0
.venv/bin/pytest -q -p no:cacheprovider \
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
