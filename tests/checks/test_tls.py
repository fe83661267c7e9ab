"""The ``tls`` check against real TLS servers on loopback, and its certificate rules."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from snmp_watchdog import model
from snmp_watchdog.checks import _net, run_check
from snmp_watchdog.checks.tls import Certificate, certificate_verdict
from snmp_watchdog.exceptions import LocalProblem
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckResult, Transcript
from snmp_watchdog.scheduler import Scheduler
from snmp_watchdog.state import State
from tests.checks.certs import Pki, ServerCert, make_pki
from tests.helpers import free_tcp_port

DAY = 86400.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def service(port: int, ca_file: Path | None = None, **options: Any) -> model.Service:
    base = model.Service(
        name="web-tls",
        host="127.0.0.1",
        port=port,
        check=model.CheckKind.TLS,
        timeout=2.0,
        ca_file=ca_file,
    )
    return dataclasses.replace(base, **options)


async def run(svc: model.Service, transcript: Transcript | None = None) -> CheckResult:
    """Through the real runner: the registry, one deadline, network errors mapped."""
    return await run_check(svc, transcript)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


@contextlib.asynccontextmanager
async def server(
    context: ssl.SSLContext | None, handler: Handler = _until_eof
) -> AsyncIterator[int]:
    """A loopback server (TLS when given a context); yields its port.

    On the way out it stops listening and waits for the handlers, so no
    connection outlives the test.
    """
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except OSError:
            pass  # the client went away: nothing to serve
        finally:
            writer.transport.abort()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        # The check closes after its verdict, in the background: let that end first.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=2)
        listener.close()
        await listener.wait_closed()
        # Every connection ends when the check closes its side.
        async with asyncio.timeout(2):
            await asyncio.gather(*tasks)


async def probe(cert: ServerCert, svc: Callable[[int], model.Service]) -> CheckResult:
    async with server(cert.server_context()) as port:
        return await run(svc(port))


def check(cert: ServerCert, svc: Callable[[int], model.Service]) -> CheckResult:
    return asyncio.run(probe(cert, svc))


def days_left(cert: ServerCert) -> int:
    return (cert.not_after - datetime.now(UTC)).days


# --- against servers -------------------------------------------------------


def test_valid_certificate_is_ok_with_its_expiry_date(pki: Pki) -> None:
    result = check(pki.valid, lambda port: service(port, pki.ca_file))
    assert result.reason is Reason.OK
    assert result.detail == (
        f"certificate valid until {pki.valid.not_after:%Y-%m-%d} ({days_left(pki.valid)} days)"
    )
    assert 0 < result.elapsed < 2


def test_server_name_is_verified_instead_of_host(pki: Pki) -> None:
    result = check(pki.valid, lambda port: service(port, pki.ca_file, server_name="localhost"))
    assert result.reason is Reason.OK


def test_expired_certificate_fails_verification(pki: Pki) -> None:
    result = check(pki.expired, lambda port: service(port, pki.ca_file))
    assert result.reason is Reason.TLS
    assert result.detail == "certificate verification failed: certificate has expired"


def test_expired_certificate_fails_even_without_verification(pki: Pki) -> None:
    result = check(pki.expired, lambda port: service(port, tls_verify=False))
    assert result.reason is Reason.TLS
    assert result.detail == (
        f"certificate expired {pki.expired.not_after:%Y-%m-%d %H:%M} UTC (1 day ago)"
    )


def test_certificate_expiring_within_the_warning_period(pki: Pki) -> None:
    result = check(pki.expiring, lambda port: service(port, pki.ca_file))
    assert result.reason is Reason.CERTIFICATE_EXPIRING
    assert result.detail == (
        f"certificate expires {pki.expiring.not_after:%Y-%m-%d %H:%M} UTC (2 days left)"
    )


def test_expiring_certificate_outside_a_shorter_warning_period_is_ok(pki: Pki) -> None:
    result = check(pki.expiring, lambda port: service(port, pki.ca_file, cert_warning=DAY))
    assert result.reason is Reason.OK
    assert result.detail.endswith("(2 days)")


def test_expiry_is_judged_without_verification_too(pki: Pki) -> None:
    result = check(pki.expiring, lambda port: service(port, tls_verify=False))
    assert result.reason is Reason.CERTIFICATE_EXPIRING


def test_wrong_host_name(pki: Pki) -> None:
    result = check(pki.wrong_host, lambda port: service(port, pki.ca_file, server_name="localhost"))
    assert result.reason is Reason.TLS
    assert "Hostname mismatch" in result.detail
    assert "'localhost'" in result.detail


def test_wrong_ip_address(pki: Pki) -> None:
    result = check(pki.wrong_host, lambda port: service(port, pki.ca_file))
    assert result.reason is Reason.TLS
    assert "IP address mismatch" in result.detail


def test_self_signed_certificate_fails_verification(pki: Pki) -> None:
    result = check(pki.self_signed, lambda port: service(port, pki.ca_file))
    assert result.reason is Reason.TLS
    assert result.detail == "certificate verification failed: self-signed certificate"


def test_unknown_issuer_fails_against_the_system_store(pki: Pki) -> None:
    result = check(pki.valid, service)
    assert result.reason is Reason.TLS
    assert "unable to get local issuer certificate" in result.detail


@pytest.mark.parametrize("which", ["self_signed", "wrong_host", "valid"])
def test_without_verification_chain_and_name_do_not_matter(pki: Pki, which: str) -> None:
    cert: ServerCert = getattr(pki, which)
    result = check(cert, lambda port: service(port, tls_verify=False))
    assert result.reason is Reason.OK
    assert result.detail.startswith("certificate valid until ")


def test_a_server_that_does_not_speak_tls() -> None:
    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        await reader.read()

    async def main() -> CheckResult:
        async with server(None, ssh) as port:
            return await run(service(port, tls_verify=False))

    result = asyncio.run(main())
    assert result.reason is Reason.TLS
    assert result.detail.startswith("TLS error: ")


def test_a_server_that_never_handshakes_times_out() -> None:
    async def main() -> CheckResult:
        async with server(None) as port:
            return await run(service(port, timeout=0.3))

    result = asyncio.run(main())
    assert result.reason is Reason.TIMEOUT
    assert 0.3 <= result.elapsed < 1


def test_nothing_listening_is_refused() -> None:
    result = asyncio.run(run(service(free_tcp_port())))
    assert result.reason is Reason.REFUSED


def test_transcript_tells_connect_protocol_and_certificate(pki: Pki) -> None:
    transcript = Transcript()

    async def main() -> CheckResult:
        async with server(pki.valid.server_context()) as port:
            return await run(service(port, pki.ca_file), transcript)

    assert asyncio.run(main()).ok
    assert [e.direction for e in transcript.entries] == ["info", "info", "info"]
    connect, protocol, certificate = (e.data.decode() for e in transcript.entries)
    assert connect.startswith("connected to 127.0.0.1 port ")
    assert protocol.startswith("TLS TLSv1.3, cipher TLS_")
    assert certificate == (
        "certificate subject CN=valid server, issuer CN=snmp-watchdog test CA, "
        f"notAfter {pki.valid.not_after:%Y-%m-%d %H:%M:%S} UTC"
    )
    times = [e.at for e in transcript.entries]
    assert times == sorted(times)


def test_transcript_tells_a_failed_handshake(pki: Pki) -> None:
    transcript = Transcript()

    async def main() -> CheckResult:
        async with server(pki.self_signed.server_context()) as port:
            return await run(service(port, pki.ca_file), transcript)

    assert asyncio.run(main()).reason is Reason.TLS
    assert transcript.entries[-1].direction == "info"
    assert transcript.entries[-1].data == (
        b"TLS handshake failed: certificate verification failed: self-signed certificate"
    )


def test_the_server_sees_a_clean_close(pki: Pki) -> None:
    """The check ends with a close_notify, not a bare end of the TCP stream."""
    context = pki.valid.server_context()
    seen: list[bytes | str] = []

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as stream:
            stream.settimeout(2)
            try:
                seen.append(stream.recv(100))
            except ssl.SSLEOFError:
                seen.append("EOF without close_notify")

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=serve, args=(listener,))
        thread.start()
        result = asyncio.run(run(service(listener.getsockname()[1], pki.ca_file)))
        thread.join(3)
    assert result.ok
    assert seen == [b""]


def test_a_server_that_ignores_close_notify_does_not_hold_the_verdict(pki: Pki) -> None:
    """The check waits at most CLOSE_GRACE for the peer's side of the close."""
    context = pki.valid.server_context()
    release = threading.Event()

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True):
            release.wait(3)  # neither reads nor closes

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=serve, args=(listener,))
        thread.start()
        began = time.monotonic()
        try:
            result = asyncio.run(run(service(listener.getsockname()[1], pki.ca_file)))
        finally:
            release.set()
            thread.join(3)
    assert result.ok
    assert result.elapsed < 0.2
    assert time.monotonic() - began < _net.CLOSE_GRACE + 0.3


@pytest.mark.parametrize("kind", ["tls", "https"])
def test_a_verdict_reached_is_kept_when_the_close_outlasts_the_deadline(
    pki: Pki, kind: str
) -> None:
    """A peer that never answers the close_notify cannot turn ``ok`` into ``timeout``,
    even with a deadline shorter than CLOSE_GRACE; the close is still bounded."""
    context = pki.valid.server_context()
    release = threading.Event()

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as stream:
            if kind == "https":
                request = b""
                while b"\r\n\r\n" not in request:
                    request += stream.recv(4096)
                stream.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            release.wait(5)  # neither reads nor closes

    async def main(port: int) -> tuple[CheckResult, set[asyncio.Task[Any]]]:
        svc = kind_service(kind, port, pki.ca_file, timeout=0.3)
        assert svc.timeout < _net.CLOSE_GRACE
        result = await run(svc)
        await asyncio.sleep(_net.CLOSE_GRACE + 0.2)
        return result, asyncio.all_tasks() - {asyncio.current_task()}

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=serve, args=(listener,))
        thread.start()
        try:
            result, left = asyncio.run(main(listener.getsockname()[1]))
        finally:
            release.set()
            thread.join(3)
    assert result.ok, result
    assert result.elapsed < 0.3
    assert left == set()  # nothing of the check outlives CLOSE_GRACE


# --- contexts ---------------------------------------------------------------


def test_contexts_are_built_once_per_ca_file_and_verify_setting(pki: Pki) -> None:
    one = service(1, pki.ca_file)
    assert _net.client_context(one) is _net.client_context(dataclasses.replace(one, port=2))
    unverified = _net.client_context(dataclasses.replace(one, tls_verify=False))
    assert unverified is not _net.client_context(one)
    assert unverified.verify_mode is ssl.CERT_NONE
    assert not unverified.check_hostname
    assert _net.client_context(one).verify_mode is ssl.CERT_REQUIRED
    assert _net.client_context(one).minimum_version is ssl.TLSVersion.TLSv1_2


def test_every_context_is_tls_1_2_at_least_and_ignores_ca_file_when_not_verifying(
    pki: Pki, tmp_path: Path
) -> None:
    gone = tmp_path / "no-such-ca.pem"
    for svc in (
        service(1, pki.ca_file),
        service(1),
        service(1, tls_verify=False),
        service(1, gone, tls_verify=False),
        service(1, pki.ca_file, check=model.CheckKind.SMTP, tls=True),
    ):
        assert _net.client_context(svc).minimum_version is ssl.TLSVersion.TLSv1_2
    unverified = _net.client_context(service(1, tls_verify=False))
    assert _net.client_context(service(1, gone, tls_verify=False)) is unverified


@contextlib.contextmanager
def watchdog_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture what the watchdog logs (INFO and up), whatever its logger's settings."""
    logger = logging.getLogger("snmp_watchdog")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # each record once, through this handler
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
        logger.propagate = propagate


def logged(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


#: A TLS check of each family: the ``tls`` check, ``https`` and implicit TLS (pop3s).
TLS_KINDS = ["tls", "https", "pop3s"]


def kind_service(kind: str, port: int, ca_file: Path | None, **options: Any) -> model.Service:
    if kind == "https":
        return service(port, ca_file, check=model.CheckKind.HTTPS, **options)
    if kind == "pop3s":
        return service(port, ca_file, check=model.CheckKind.POP3, tls=True, **options)
    return service(port, ca_file, **options)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """POP3 over TLS (greeting, QUIT), or nothing for the tls check."""
    writer.write(b"+OK ready\r\n")  # the tls check reads nothing and ignores it
    await writer.drain()
    if (await reader.readline()).startswith(b"QUIT"):
        writer.write(b"+OK bye\r\n")
    await writer.drain()
    await reader.read()


async def _answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await reader.read()


def handler_for(kind: str) -> Handler:
    return _answer_http if kind == "https" else _answer


def check_kind(kind: str, cert: ServerCert, ca_file: Path | None, **options: Any) -> CheckResult:
    async def main() -> CheckResult:
        async with server(cert.server_context(), handler_for(kind)) as port:
            return await run(kind_service(kind, port, ca_file, **options))

    return asyncio.run(main())


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second PKI: its CA does not know the first one's certificates."""
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.mark.parametrize("how", ["renamed over", "rewritten"])
@pytest.mark.parametrize("kind", TLS_KINDS)
def test_a_replaced_ca_file_is_used_at_the_next_check(
    pki: Pki, other_pki: Pki, tmp_path: Path, kind: str, how: str
) -> None:
    ca_file = tmp_path / "bundle.pem"
    shutil.copy(pki.ca_file, ca_file)
    assert check_kind(kind, pki.valid, ca_file).ok
    if how == "renamed over":
        shutil.copy(other_pki.ca_file, tmp_path / "new.pem")
        os.replace(tmp_path / "new.pem", ca_file)
    else:
        time.sleep(0.02)  # a moment later: file times advance by clock ticks, not nanoseconds
        ca_file.write_bytes(other_pki.ca_file.read_bytes())
    result = check_kind(kind, pki.valid, ca_file)
    assert result.reason is Reason.TLS
    assert "certificate verify failed" in result.detail or "unable to get" in result.detail
    assert check_kind(kind, other_pki.valid, ca_file).ok


@pytest.mark.parametrize("kind", TLS_KINDS)
def test_a_ca_file_gone_bad_is_logged_once_and_the_last_good_one_kept(
    pki: Pki, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ca_file = tmp_path / "bundle.pem"
    shutil.copy(pki.ca_file, ca_file)
    with watchdog_logs(caplog):
        assert check_kind(kind, pki.valid, ca_file).ok
        ca_file.unlink()
        assert check_kind(kind, pki.valid, ca_file).ok
        assert check_kind(kind, pki.valid, ca_file).ok
        assert logged(caplog) == [
            f"configuration problem: ca_file {ca_file}: cannot read it: No such file or "
            "directory; checks go on with the certificates read from it before"
        ]
        caplog.clear()
        ca_file.write_text("not a certificate\n")
        assert check_kind(kind, pki.valid, ca_file).ok
        assert check_kind(kind, pki.valid, ca_file).ok
        [line] = logged(caplog)
        assert line.startswith(f"configuration problem: ca_file {ca_file}: cannot use it: ")
        caplog.clear()
        shutil.copy(pki.ca_file, ca_file)
        assert check_kind(kind, pki.valid, ca_file).ok
        assert logged(caplog) == []
        assert logged(caplog, logging.INFO) == [f"ca_file {ca_file} is usable again"]


@pytest.mark.parametrize("content", [None, b"", b"-----BEGIN CERTIFICATE-----\nnonsense\n"])
@pytest.mark.parametrize("kind", TLS_KINDS)
def test_a_ca_file_never_usable_gives_no_verdict(
    pki: Pki, tmp_path: Path, kind: str, content: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    ca_file = tmp_path / "bundle.pem"
    if content is not None:
        ca_file.write_bytes(content)
    with watchdog_logs(caplog):
        for _ in range(2):
            with pytest.raises(LocalProblem, match=f"ca_file {ca_file}: cannot "):
                check_kind(kind, pki.valid, ca_file)
        [line] = logged(caplog)
    assert line.startswith(f"configuration problem: ca_file {ca_file}: cannot ")
    assert line.endswith("; services that use it are not checked until it is fixed")


def test_without_a_verdict_the_service_keeps_its_state(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduler runs the real check; a CA file that never worked decides nothing."""
    ca_file = tmp_path / "missing.pem"
    results: list[CheckResult] = []

    async def main() -> Scheduler:
        async with server(pki.valid.server_context()) as port:
            svc = dataclasses.replace(
                service(port, ca_file), interval=0.05, retry_interval=0.05, jitter=0.0
            )
            sched = Scheduler(
                [svc],
                check=run_check,
                on_result=lambda _svc, _before, _state, result, _notes: results.append(result),
            )
            task = asyncio.create_task(sched.run())
            await asyncio.sleep(0.4)
            sched.stop()
            await task
            return sched

    with watchdog_logs(caplog):
        sched = asyncio.run(main())
    assert results == []
    assert sched.states()["web-tls"].state is State.UNKNOWN
    assert len(logged(caplog)) == 1
    assert "internal error" not in caplog.text


# --- the verdict on dates (pure) ----------------------------------------------

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _cert(not_before: timedelta, not_after: timedelta) -> Certificate:
    return Certificate("CN=x", "CN=ca", NOW + not_before, NOW + not_after)


@pytest.mark.parametrize(
    ("not_before", "not_after", "warning", "reason", "detail"),
    [
        (-1, 96.4, 14, Reason.OK, "certificate valid until 2027-03-01 (96 days)"),
        (
            -1,
            1.5,
            14,
            Reason.CERTIFICATE_EXPIRING,
            "certificate expires 2026-11-27 00:00 UTC (1 day left)",
        ),
        (
            -1,
            0.25,
            14,
            Reason.CERTIFICATE_EXPIRING,
            "certificate expires 2026-11-25 18:00 UTC (0 days left)",
        ),
        (-1, 14, 14, Reason.OK, "certificate valid until 2026-12-09 (14 days)"),
        (
            -1,
            13.9,
            14,
            Reason.CERTIFICATE_EXPIRING,
            "certificate expires 2026-12-09 09:36 UTC (13 days left)",
        ),
        (-1, 0.5, 0, Reason.OK, "certificate valid until 2026-11-26 (0 days)"),
        (-9, 0, 14, Reason.TLS, "certificate expired 2026-11-25 12:00 UTC (0 days ago)"),
        (-9, -3, 14, Reason.TLS, "certificate expired 2026-11-22 12:00 UTC (3 days ago)"),
        (1, 30, 14, Reason.TLS, "certificate not valid before 2026-11-26 12:00 UTC"),
    ],
)
def test_certificate_verdict(
    not_before: float, not_after: float, warning: float, reason: Reason, detail: str
) -> None:
    cert = _cert(timedelta(days=not_before), timedelta(days=not_after))
    assert certificate_verdict(cert, NOW, warning * DAY) == (reason, detail)


def test_an_implicit_tls_check_ends_with_its_verdict_when_the_close_is_never_answered(
    pki: Pki,
) -> None:
    """pop3s against a server that never answers the close_notify: the check returns
    at once (its in-flight slot is free again), the close is bounded in the background."""
    context = pki.valid.server_context()
    release = threading.Event()

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as stream:
            stream.sendall(b"+OK ready\r\n")
            request = b""
            while b"\r\n" not in request:
                request += stream.recv(100)
            stream.sendall(b"+OK bye\r\n")
            release.wait(8)  # neither reads nor closes

    async def main(port: int) -> tuple[CheckResult, float, set[asyncio.Task[Any]]]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        result = await run(kind_service("pop3s", port, pki.ca_file, timeout=4.0))
        took = loop.time() - began
        await asyncio.sleep(_net.CLOSE_GRACE + 0.2)
        return result, took, asyncio.all_tasks() - {asyncio.current_task()}

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=serve, args=(listener,))
        thread.start()
        try:
            result, took, left = asyncio.run(main(listener.getsockname()[1]))
        finally:
            release.set()
            thread.join(3)
    assert result.ok, result
    assert took < 2.0  # not the 4 s deadline
    assert left == set()  # nothing of the check outlives CLOSE_GRACE
