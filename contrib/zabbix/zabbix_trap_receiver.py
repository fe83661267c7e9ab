#!/usr/bin/env python3
"""Pass SNMP notifications from Net-SNMP's snmptrapd to Zabbix's SNMP trapper.

Use it in snmptrapd.conf as a trap handler (Python 3 standard library only)::

    traphandle default /usr/local/bin/zabbix_trap_receiver.py --file FILE

FILE must be the one the Zabbix server or proxy reads (``SNMPTrapperFile``
with ``StartSNMPTrapper=1``). It is taken from ``--file``, else from the
environment variable ``ZABBIX_SNMPTRAPPER_FILE``, else it is
``/tmp/zabbix_traps.tmp`` (the default of Zabbix and of its Perl receiver).

Rules:

* Input is what snmptrapd gives a trap handler on standard input: the sender's
  host name, the transport address (``UDP: [192.0.2.10]:40123->[192.0.2.1]:162``),
  then one line per variable binding, ``OID VALUE``. A value that spans lines
  arrives as more lines; they are copied indented, without the column.
* One record is appended per notification::

      15:04:05 2026/11/25 ZBXTRAP 192.0.2.10
      PDU INFO:
        hostname                       watchdog.example.net
        receivedfrom                   UDP: [192.0.2.10]:40123->[192.0.2.1]:162
      VARBINDS:
        SNMPv2-MIB::sysUpTime.0        0:0:12:01.00
        SNMPv2-MIB::snmpTrapOID.0      SNMP-WATCHDOG-MIB::wdServiceDown
        SNMP-WATCHDOG-MIB::wdServiceName.1 mail

  The first line is what the Zabbix SNMP trapper looks for: a time stamp in
  local time (``%H:%M:%S %Y/%m/%d``, the Perl receiver's format; the item log
  time format ``hh:mm:sszyyyy/MM/dd`` reads it), then ``ZBXTRAP`` and the
  address that Zabbix compares with the IP address of each host's SNMP
  interface. Zabbix removes ``ZBXTRAP`` and the address; the rest, up to the
  next record, is the value of the matching ``snmptrap[regex]`` items.
* The address is the UDP source address of the notification: an IPv4 address
  mapped into IPv6 (``::ffff:192.0.2.10``) is written as IPv4, an IPv6 address
  in its compressed form. When the transport line holds no IP address in
  brackets it is ``unknown`` (Zabbix then matches no host and logs the trap
  as unmatched, if so configured).
* Zabbix starts a new record wherever the text ``ZBXTRAP`` appears, so in the
  copied text it is written ``ZBX_TRAP``; control characters other than tab
  are written as ``\\xNN``, and bytes that are not UTF-8 as ``\\xNN`` too, so
  one record can neither split nor swallow another.
* The record is written with one ``write`` under an exclusive ``flock`` on the
  file, opened for appending (created with mode 0644 less the umask), so
  concurrent handlers and other writers that lock the file do not interleave.

Exit status: 0 written, 1 the file could not be written, 2 no usable input.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import re
import sys
import time
from collections.abc import Sequence

DEFAULT_FILE = "/tmp/zabbix_traps.tmp"  # noqa: S108 (Zabbix's own default SNMPTrapperFile)
FILE_ENV = "ZABBIX_SNMPTRAPPER_FILE"
TIME_FORMAT = "%H:%M:%S %Y/%m/%d"
HEADER_MARK = "ZBXTRAP"
HEADER_MARK_ESCAPED = "ZBX_TRAP"
NAME_WIDTH = 30  # column of the values, as in Zabbix's Perl receiver
FILE_MODE = 0o644

_BRACKETED = re.compile(r"\[([^\]]*)\]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

EXIT_OK, EXIT_WRITE_FAILED, EXIT_NO_INPUT = 0, 1, 2


def source_address(transport: str) -> str:
    """The address in the first brackets of snmptrapd's transport line, as Zabbix compares it."""
    match = _BRACKETED.search(transport)
    if match is None:
        return "unknown"
    try:
        address = ipaddress.ip_address(match.group(1).split("%", 1)[0])  # no IPv6 zone
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return address.compressed


def clean(text: str) -> str:
    """One line of copied text that cannot start a record or break a line."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text.replace(HEADER_MARK, HEADER_MARK_ESCAPED)


def varbind_line(line: str) -> str:
    """``  OID VALUE`` with the value in the Perl receiver's column; other lines (the rest of a
    value that spans lines) only indented."""
    line = clean(line)
    name, sep, value = line.partition(" ")
    if not sep or "." not in name:  # every OID snmptrapd prints has a dot
        return f"  {line}"
    return f"  {name:<{NAME_WIDTH}} {value}"


def record(lines: Sequence[str], now: float) -> str:
    """The text appended for one notification (snmptrapd's input lines, without newlines)."""
    hostname = lines[0] if lines else ""
    transport = lines[1] if len(lines) > 1 else ""
    out = [
        f"{time.strftime(TIME_FORMAT, time.localtime(now))} {HEADER_MARK} "
        f"{source_address(transport)}",
        "PDU INFO:",
        f"  {'hostname':<{NAME_WIDTH}} {clean(hostname)}",
        f"  {'receivedfrom':<{NAME_WIDTH}} {clean(transport)}",
        "VARBINDS:",
    ]
    out += [varbind_line(line) for line in lines[2:]]
    return "\n".join(out) + "\n"


def read_input(data: bytes) -> list[str]:
    """snmptrapd's input as lines; trailing empty lines dropped."""
    text = data.decode("utf-8", errors="backslashreplace")
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1]:
        lines.pop()
    return lines


def append(path: str, text: str) -> None:
    """Append ``text`` with one write under an exclusive lock (raises OSError)."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)  # also releases the lock


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Append one notification from snmptrapd (traphandle input on standard "
        "input) to the Zabbix SNMP trapper file."
    )
    parser.add_argument(
        "-f",
        "--file",
        default=os.environ.get(FILE_ENV) or DEFAULT_FILE,
        help=f"the Zabbix SNMPTrapperFile (default: ${FILE_ENV}, else {DEFAULT_FILE})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lines = read_input(sys.stdin.buffer.read())
    if len(lines) < 2:
        print("zabbix_trap_receiver: no notification on standard input", file=sys.stderr)
        return EXIT_NO_INPUT
    try:
        append(args.file, record(lines, time.time()))
    except OSError as exc:
        print(f"zabbix_trap_receiver: cannot write {args.file}: {exc}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
