# Shared set-up steps for scripts/test.sh and scripts/demo.sh (sourced, not run).

log_file=$(mktemp)
trap 'rm -f "$log_file"' EXIT

# Run a command quietly; show its output only when it fails.
quiet() {
    if ! "$@" >"$log_file" 2>&1; then
        cat "$log_file" >&2
        echo "failed: $*" >&2
        return 1
    fi
}

step() {
    local name=$1
    shift
    if ! "$@"; then
        echo "$name failed" >&2
        exit 1
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Install Debian packages that are missing; nothing to do (and no output) otherwise.
ensure_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}"
    quiet as_root apt-get update -qq
    quiet as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# What the live Zabbix tests (tests/zabbix/) need: Debian 12's Zabbix 6.0 server with
# PostgreSQL, and its PHP frontend for the JSON-RPC API. php8.2-cli/-cgi are named so
# that apt satisfies the frontend's PHP without installing Apache.
ZABBIX_DEBS=(snmptrapd postgresql zabbix-server-pgsql zabbix-frontend-php php-pgsql
    php8.2-cli php8.2-cgi)

# A virtualenv in .venv with the package (editable) and the named extras;
# reinstalled only when pyproject.toml changes.
ensure_venv() {
    local extras=$1
    if ! python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            echo "snmp-watchdog needs Python 3.11 or newer" >&2
            exit 1
        }
        ensure_debs python3-venv
    fi
    [ -x .venv/bin/python ] || quiet python3 -m venv .venv
    local stamp
    stamp="$(sha256sum pyproject.toml | cut -c1-16)-$extras"
    if [ "$(cat .venv/.installed 2>/dev/null)" != "$stamp" ]; then
        echo "installing Python packages into .venv"
        quiet .venv/bin/pip install --disable-pip-version-check -q --upgrade pip
        quiet .venv/bin/pip install --disable-pip-version-check -q -e ".[$extras]"
        echo "$stamp" >.venv/.installed
    fi
}

# A second virtualenv, .venv-min, with every runtime dependency at the lowest
# version pyproject.toml admits (pinned in constraints/minimum.txt), so that
# those floors are tested, not guessed. Reinstalled only when either file changes.
ensure_min_venv() {
    local extras=$1
    [ -x .venv-min/bin/python ] || quiet python3 -m venv .venv-min
    local stamp
    stamp="$(cat pyproject.toml constraints/minimum.txt | sha256sum | cut -c1-16)-$extras"
    if [ "$(cat .venv-min/.installed 2>/dev/null)" != "$stamp" ]; then
        echo "installing the oldest supported dependencies into .venv-min"
        quiet .venv-min/bin/pip install --disable-pip-version-check -q --upgrade pip
        quiet .venv-min/bin/pip install --disable-pip-version-check -q \
            -c constraints/minimum.txt -e ".[$extras]"
        echo "$stamp" >.venv-min/.installed
    fi
}
