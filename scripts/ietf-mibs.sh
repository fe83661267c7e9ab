#!/usr/bin/env bash
# Usage: scripts/ietf-mibs.sh DIR
#
# Puts the IETF base MIB modules (SNMPv2-SMI, SNMPv2-TC, SNMPv2-CONF,
# SNMPv2-MIB, SNMP-FRAMEWORK-MIB, INET-ADDRESS-MIB and the other SNMP-*
# modules) into DIR, for smilint (SMIPATH=DIR), snmptranslate and snmptrapd
# (-M DIR). Debian's SNMP packages leave them out; its erlang-snmp package
# carries them as DIR/NAME.mib files, which both tools read as they are. The
# package is downloaded and unpacked, never installed.
#
# Idempotent and quiet: does nothing when DIR already holds them; prints only
# on failure.
set -euo pipefail

dir=${1:?usage: $0 DIR}
required=(SNMPv2-SMI SNMPv2-TC SNMPv2-CONF SNMPv2-MIB SNMP-FRAMEWORK-MIB INET-ADDRESS-MIB)

have_all() {
    local name
    for name in "${required[@]}"; do
        [ -s "$dir/$name.mib" ] || return 1
    done
}
have_all && exit 0

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$work/log"

# The package list may be stale (a fresh container): refresh it only then.
if ! (cd "$work" && apt-get download -q erlang-snmp) >"$log" 2>&1; then
    if ! { as_root apt-get update -q && (cd "$work" && apt-get download -q erlang-snmp); } \
        >>"$log" 2>&1; then
        cat "$log" >&2
        echo "$0: could not download Debian's erlang-snmp package" >&2
        exit 1
    fi
fi
dpkg-deb -x "$work"/erlang-snmp_*.deb "$work/root"

mkdir -p "$dir"
# Every standard module it carries. OTP-* are Erlang's own, and STANDARD-MIB
# is Erlang's copy of MIB-II that clashes with RFC1213-MIB.
find "$work/root" -path '*/mibs/*.mib' ! -name 'OTP-*' ! -name 'STANDARD-MIB.mib' \
    -exec cp -f -t "$dir" {} +
if ! have_all; then
    echo "$0: erlang-snmp lacks one of: ${required[*]}" >&2
    exit 1
fi
