"""The ``watchdog`` command.

Exit codes: 0 success, 1 the thing checked or sent failed, 2 usage or
configuration error (with a message naming the file, line and key).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from snmp_watchdog import __version__
from snmp_watchdog.config import default_config_path, load_config
from snmp_watchdog.exceptions import ConfigError, UsageError, WatchdogError
from snmp_watchdog.model import Config, Service

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def setup_logging(level: int) -> None:
    """One line per event on stderr; journald adds the time itself."""
    fmt = "%(levelname)s %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger("snmp_watchdog")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="configuration file (default: $WATCHDOG_CONFIG or /etc/snmp-watchdog/watchdog.yaml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchdog",
        description="Poll TCP services and send SNMP notifications when their state changes.",
    )
    parser.add_argument("--version", action="version", version=f"snmp-watchdog {__version__}")
    _config_arg(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level of the daemon's stderr lines (default: info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _config_arg(p)

    p = sub.add_parser("check-config", help="validate the configuration and every file it names")
    _config_arg(p)

    p = sub.add_parser("probe", help="check one service now and show the conversation")
    _config_arg(p)
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("-v", "--verbose", action="store_true", help="print the whole conversation")

    p = sub.add_parser("record", help="save what a service answers now as its good answer")
    _config_arg(p)
    p.add_argument("service", metavar="SERVICE")

    p = sub.add_parser("test-trap", help="send a test notification to the receivers")
    _config_arg(p)
    p.add_argument("--receiver", metavar="NAME", action="append", help="only this receiver")
    p.add_argument(
        "--service", metavar="NAME", help="send a Down then an Up for this service, marked as test"
    )
    p.add_argument("--inform", action="store_true", help="send as informs and wait for the acks")

    p = sub.add_parser("status", help="the state of every service, from the state store")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("mib", help="print the bundled MIB")
    _config_arg(p)
    p.add_argument("--root", metavar="OID", help="move the whole tree under this OID")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config_path: Path = getattr(args, "config", None) or default_config_path()
    setup_logging(getattr(logging, args.log_level.upper()))
    try:
        handler = COMMANDS[args.command]
        return handler(args, config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WatchdogError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _find_service(config: Config, name: str) -> Service:
    try:
        return config.service(name)
    except KeyError:
        names = ", ".join(s.name for s in config.services) or "none"
        raise UsageError(
            f"no service named {name!r} in {config.path} (services: {names})"
        ) from None


def cmd_run(args: argparse.Namespace, config_path: Path) -> int:
    from snmp_watchdog import daemon  # noqa: PLC0415 (keeps other commands' start-up light)

    return daemon.run(config_path)


def cmd_check_config(args: argparse.Namespace, config_path: Path) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        n = len(exc.problems)
        print(f"{n} problem{'s' if n != 1 else ''} in {config_path}")
        return EXIT_USAGE
    print(f"{config_path}: OK ({len(config.services)} services, {len(config.receivers)} receivers)")
    return EXIT_OK


def cmd_probe(args: argparse.Namespace, config_path: Path) -> int:
    from snmp_watchdog.checks import run_check  # noqa: PLC0415
    from snmp_watchdog.checks._format import format_conversation  # noqa: PLC0415
    from snmp_watchdog.result import Transcript  # noqa: PLC0415

    config = load_config(config_path, allow_missing_expect=True)
    svc = _find_service(config, args.service)
    transcript = Transcript()
    result = asyncio.run(run_check(svc, transcript))
    print(f"{svc.name}: {svc.check.value} check of {svc.host}:{svc.port}")
    print(format_conversation(transcript, result, verbose=args.verbose))
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_record(args: argparse.Namespace, config_path: Path) -> int:
    from snmp_watchdog.checks import run_check  # noqa: PLC0415
    from snmp_watchdog.result import Transcript  # noqa: PLC0415
    from snmp_watchdog.statusfiles import write_atomic  # noqa: PLC0415

    config = load_config(config_path, allow_missing_expect=True)
    svc = _find_service(config, args.service)
    if svc.expect_file is None:
        raise UsageError(f"service {svc.name!r} has no expect_file to record into")
    # Record the raw answer, whatever the old recording says.
    result = asyncio.run(run_check(replace(svc, expect_answer=None), Transcript()))
    if not result.ok or result.answer is None:
        print(f"{svc.name}: not recorded: {result.reason.code}: {result.detail}", file=sys.stderr)
        return EXIT_FAILED
    write_atomic(svc.expect_file, result.answer)
    print(f"{svc.name}: recorded {len(result.answer)} bytes into {svc.expect_file}")
    return EXIT_OK


def cmd_mib(args: argparse.Namespace, config_path: Path) -> int:
    from snmp_watchdog.model import parse_oid  # noqa: PLC0415
    from snmp_watchdog.notify.mib import mib_text  # noqa: PLC0415

    root = None
    if args.root is not None:
        try:
            root = parse_oid(args.root)
            text = mib_text(root)
        except ValueError as exc:
            raise UsageError(f"--root {args.root}: {exc}") from None
    else:
        text = mib_text()
    sys.stdout.write(text)
    return EXIT_OK


def cmd_test_trap(args: argparse.Namespace, config_path: Path) -> int:
    from snmp_watchdog.exceptions import StoreError  # noqa: PLC0415
    from snmp_watchdog.notify.testtrap import send_tests  # noqa: PLC0415
    from snmp_watchdog.store import Store  # noqa: PLC0415

    config = load_config(config_path)
    receivers = list(config.receivers)
    if args.receiver:
        known = {r.name: r for r in receivers}
        unknown = [n for n in args.receiver if n not in known]
        if unknown:
            names = ", ".join(known) or "none"
            raise UsageError(f"no receiver named {unknown[0]!r} (receivers: {names})")
        receivers = [known[n] for n in args.receiver]
    if not receivers:
        raise UsageError(f"{config.path} defines no receivers")
    service, index = None, 0
    if args.service is not None:
        service = _find_service(config, args.service)
        index = config.services.index(service) + 1
        try:
            with Store.open(config.settings.state_dir, readonly=True) as store:
                index = store.known_indexes().get(service.name, index)
        except StoreError:
            pass  # no daemon has run yet: the position in the file will do
    outcomes = asyncio.run(send_tests(config, receivers, service, index, inform=args.inform))
    for outcome in outcomes:
        r = outcome.receiver
        results = "; ".join(str(d) for d in outcome.deliveries)
        print(f"{r.name} ({r.host}:{r.port} v{r.version} {r.mode}): {results}")
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def cmd_status(args: argparse.Namespace, config_path: Path) -> int:
    from snmp_watchdog import status  # noqa: PLC0415

    data = status.collect(load_config(config_path))
    print(status.to_json(data) if args.json else status.render(data))
    return EXIT_OK


COMMANDS = {
    "test-trap": cmd_test_trap,
    "status": cmd_status,
    "run": cmd_run,
    "check-config": cmd_check_config,
    "probe": cmd_probe,
    "record": cmd_record,
    "mib": cmd_mib,
}
