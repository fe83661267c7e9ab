"""The ``http``/``https`` checks against real servers on loopback, and their parser."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any

import pytest

import snmp_watchdog
from snmp_watchdog import model
from snmp_watchdog.checks import run_check
from snmp_watchdog.checks.http import (
    ChunkedDecoder,
    framing,
    parse_head,
    request_bytes,
)
from snmp_watchdog.reasons import Reason
from snmp_watchdog.result import CheckFailed, CheckResult, Transcript
from tests.checks.certs import Pki, ServerCert, make_pki
from tests.helpers import free_tcp_port

Kind = model.CheckKind
LARGE = b"BEGIN " + b"x" * (100 * 1024) + b" END"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def service(port: int, **options: Any) -> model.Service:
    base = model.Service(name="web", host="127.0.0.1", port=port, check=Kind.HTTP, timeout=2.0)
    return dataclasses.replace(base, **options)


def body(pattern: bytes) -> re.Pattern[bytes]:
    return re.compile(pattern)


async def run(svc: model.Service, transcript: Transcript | None = None) -> CheckResult:
    """Through the real runner: the registry, one deadline, network errors mapped."""
    return await run_check(svc, transcript)


# --- a real HTTP server (http.server, in a thread) ---------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WebServer

    def do_GET(self) -> None:
        self.server.requests.append((self.requestline, dict(self.headers.items())))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"alpha ", b"beta ", b"status=green", b" omega"):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            return
        if self.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"no length given; status=green")
            self.close_connection = True
            return
        status, content = {
            "/": (200, b"hello from the watchdog test server; status=green\n"),
            "/down": (503, b"maintenance\n"),
            "/created": (201, b""),
            "/moved": (302, b""),
            "/missing": (404, b"no such page\n"),
            "/large": (200, LARGE),
        }[self.path]
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebServer(ThreadingHTTPServer):
    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), Handler)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # no reverse DNS look-up of the address
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def web_server(context: ssl.SSLContext | None = None) -> Iterator[WebServer]:
    server = WebServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture(scope="module")
def web() -> Iterator[WebServer]:
    with web_server() as server:
        yield server


def check(svc: model.Service, transcript: Transcript | None = None) -> CheckResult:
    return asyncio.run(run(svc, transcript))


# --- scripted servers for misbehaviour (asyncio, in the test's loop) ---------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    """A server that reads the request head, then runs ``script``; yields its port."""
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await script(reader, writer)
            await writer.drain()
            await reader.read()  # until the client closes
        except OSError:
            pass
        finally:
            writer.transport.abort()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await listener.wait_closed()
        # Every connection ends when the check closes its side.
        async with asyncio.timeout(2):
            await asyncio.gather(*tasks)


def check_scripted(script: Script, **options: Any) -> CheckResult:
    async def main() -> CheckResult:
        async with scripted(script) as port:
            return await run(service(port, **options))

    return asyncio.run(main())


def sends(data: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)

    return script


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    pass  # reads on until the client gives up


# --- status ------------------------------------------------------------------


def test_200_is_ok_and_the_request_is_well_formed(web: WebServer) -> None:
    before = len(web.requests)
    result = check(service(web.port))
    assert result.reason is Reason.OK
    assert result.detail == "HTTP 200 OK"
    assert 0 < result.elapsed < 2
    line, headers = web.requests[before]
    assert line == "GET / HTTP/1.1"
    assert headers == {
        "Host": f"127.0.0.1:{web.port}",
        "User-Agent": f"snmp-watchdog/{snmp_watchdog.__version__}",
        "Accept": "*/*",
        "Connection": "close",
    }


def test_503_is_an_http_status_failure(web: WebServer) -> None:
    result = check(service(web.port, http_path="/down"))
    assert result.reason is Reason.HTTP_STATUS
    assert result.detail == "HTTP 503 Service Unavailable (expected 2xx or 3xx)"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/created", Reason.OK),
        ("/moved", Reason.OK),
        ("/missing", Reason.HTTP_STATUS),
    ],
)
def test_any_2xx_or_3xx_is_accepted_by_default(web: WebServer, path: str, reason: Reason) -> None:
    assert check(service(web.port, http_path=path)).reason is reason


def test_redirects_are_not_followed(web: WebServer) -> None:
    before = len(web.requests)
    assert check(service(web.port, http_path="/moved")).detail == "HTTP 302 Found"
    assert [line for line, _ in web.requests[before:]] == ["GET /moved HTTP/1.1"]


def test_accepted_status_list(web: WebServer) -> None:
    assert check(service(web.port, http_path="/down", http_status=(503,))).ok
    result = check(service(web.port, http_status=(204, 301)))
    assert result.reason is Reason.HTTP_STATUS
    assert result.detail == "HTTP 200 OK (expected 204, 301)"


def test_interim_responses_are_skipped() -> None:
    result = check_scripted(
        sends(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
        http_body=body(b"^$"),
    )
    assert result.reason is Reason.OK
    assert result.detail == "HTTP 204 No Content"


def test_a_status_line_without_reason_phrase() -> None:
    result = check_scripted(sends(b"HTTP/1.0 200\r\nContent-Length: 0\r\n\r\n"))
    assert result.reason is Reason.OK
    assert result.detail == "HTTP 200"


# --- body --------------------------------------------------------------------


def test_body_regex_match(web: WebServer) -> None:
    assert check(service(web.port, http_body=body(rb"status=(green|yellow)"))).ok


def test_body_regex_no_match(web: WebServer) -> None:
    result = check(service(web.port, http_body=body(rb"status=red")))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "HTTP 200 OK, body does not match /status=red/"


def test_chunked_body_is_decoded(web: WebServer) -> None:
    svc = service(web.port, http_path="/chunked")
    assert check(dataclasses.replace(svc, http_body=body(rb"^alpha beta status=green omega$"))).ok
    result = check(dataclasses.replace(svc, http_body=body(rb"ext=1|X-Trailer")))
    assert result.reason is Reason.UNEXPECTED_RESPONSE


def test_body_until_the_server_closes(web: WebServer) -> None:
    assert check(service(web.port, http_path="/until-close", http_body=body(b"green$"))).ok


def test_large_body_is_searched_up_to_the_bound(web: WebServer) -> None:
    transcript = Transcript()
    result = check(service(web.port, http_path="/large", http_body=body(b"^BEGIN x")), transcript)
    assert result.ok
    received = sum(len(e.data) for e in transcript.entries if e.direction == "recv")
    assert received <= model.MAX_READ


def test_large_body_without_a_match_is_too_large(web: WebServer) -> None:
    transcript = Transcript()
    result = check(service(web.port, http_path="/large", http_body=body(b"END")), transcript)
    assert result.reason is Reason.TOO_LARGE
    assert re.fullmatch(
        r"HTTP 200 OK, body larger than 64 KiB; /END/ not in its first \d+ bytes", result.detail
    )
    received = sum(len(e.data) for e in transcript.entries if e.direction == "recv")
    assert received == model.MAX_READ


def test_large_body_is_not_read_without_a_body_regex(web: WebServer) -> None:
    assert check(service(web.port, http_path="/large")).ok


def test_without_a_body_regex_the_body_is_not_awaited() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nstart of a body that stalls"
    result = check_scripted(sends(head), timeout=1.0)
    assert result.ok
    assert result.elapsed < 0.5
    stalled = check_scripted(sends(head), timeout=0.3, http_body=body(b"never"))
    assert stalled.reason is Reason.TIMEOUT


def test_body_cut_short_by_the_server() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        writer.close()

    result = check_scripted(script, http_body=body(b"complete"))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert (
        result.detail == "HTTP 200 OK, body cut short by the server; /complete/ not in its 9 bytes"
    )


def test_bad_chunk_size_is_unexpected() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    result = check_scripted(sends(reply), http_body=body(b"hello"))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "malformed chunk size: 'zz'"


# --- not HTTP, silence, closes ---------------------------------------------------


def test_garbage_instead_of_a_status_line_fails_at_once() -> None:
    result = check_scripted(sends(b"SSH-2.0-OpenSSH_9.2p1\r\n"), timeout=2.0)
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "not an HTTP response: 'SSH-2.0-OpenSSH_9.2p1'"
    assert result.elapsed < 1


def test_a_broken_status_line_fails_at_once() -> None:
    result = check_scripted(sends(b"HTTP/1.1 OK fine\r\n"), timeout=2.0)
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "not an HTTP status line: 'HTTP/1.1 OK fine'"
    assert result.elapsed < 1


def test_a_malformed_header_is_unexpected() -> None:
    result = check_scripted(sends(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"))
    assert result.reason is Reason.UNEXPECTED_RESPONSE
    assert result.detail == "malformed header line: 'no colon here'"


def test_a_server_that_never_answers_times_out() -> None:
    result = check_scripted(silent, timeout=0.3)
    assert result.reason is Reason.TIMEOUT
    assert 0.3 <= result.elapsed < 1


def test_a_server_that_closes_without_answering() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    result = check_scripted(hang_up)
    assert result.reason is Reason.CLOSED
    assert result.detail == "connection closed without a response"


def test_an_endless_head_is_too_large() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(10_000):
            writer.write(b"X-Filler-%d: %s\r\n" % (n, b"y" * 40))
            await writer.drain()

    result = check_scripted(endless)
    assert result.reason is Reason.TOO_LARGE
    assert result.detail == "response head larger than 64 KiB"


def test_nothing_listening_is_refused() -> None:
    assert check(service(free_tcp_port())).reason is Reason.REFUSED


ENDLESS = {
    "body": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"x" * 65536),
    "head": (b"HTTP/1.1 200 OK\r\n", b"X-Filler: " + b"y" * 1000 + b"\r\n"),
}


@contextlib.contextmanager
def endless_server(prefix: bytes, chunk: bytes) -> Iterator[int]:
    """A plain TCP server (a thread) that answers any request with ``prefix`` and then
    ``chunk`` again and again, as fast as the client takes it, until the client goes."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(prefix)
                    while not stop.is_set():
                        conn.sendall(chunk)
                except OSError:
                    pass  # the client went: what it did not read is its business

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def bytes_received(trace: Path, port: int) -> int:
    """What the traced process received on its connection to ``port`` (``strace -yy -ff``)."""
    connection = re.compile(rf"^(?:read|recvfrom|recvmsg)\(\d+<TCP:\[[^]]*->127\.0\.0\.1:{port}\]>")
    total = 0
    for path in trace.parent.glob(trace.name + ".*"):
        for line in path.read_text(errors="replace").splitlines():
            result = re.search(r"\) = (\d+)$", line)
            if connection.match(line) and result:
                total += int(result[1])
    return total


@pytest.mark.parametrize("what", ["body", "head"])
def test_what_is_read_of_an_endless_answer_is_bounded(tmp_path: Path, what: str) -> None:
    """The bound is on what leaves the kernel, counted system call by system call:
    never more than 64 KiB (and the one byte that says "more"), not what a stream
    buffer happens to hold before it pauses."""
    with endless_server(*ENDLESS[what]) as port:
        cfg = tmp_path / "w.yaml"
        cfg.write_text(
            "services:\n"
            f"  - {{name: web, host: 127.0.0.1, port: {port}, check: http, body: never}}\n"
        )
        trace = tmp_path / "trace"
        strace = ["strace", "-f", "-ff", "-qq", "-yy", "-e", "trace=read,recvfrom,recvmsg"]
        probe = [sys.executable, "-m", "snmp_watchdog", "-c", str(cfg), "probe", "web"]
        proc = subprocess.run(
            [*strace, "-o", str(trace), *probe],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("down: too_large: ")
    received = bytes_received(trace, port)
    assert model.MAX_READ // 2 < received <= model.MAX_READ + 1


def test_transcript_holds_connect_request_and_response(web: WebServer) -> None:
    transcript = Transcript()
    assert check(service(web.port, http_body=body(b"green")), transcript).ok
    directions = [e.direction for e in transcript.entries]
    assert directions[:2] == ["info", "send"]
    assert set(directions[2:]) == {"recv"}
    assert transcript.entries[0].data == f"connected to 127.0.0.1 port {web.port}".encode()
    assert transcript.entries[1].data.startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:")
    received = b"".join(e.data for e in transcript.entries[2:])
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"status=green\n")


# --- HTTPS -----------------------------------------------------------------------


def check_https(cert: ServerCert, **options: Any) -> CheckResult:
    options.setdefault("check", Kind.HTTPS)
    with web_server(cert.server_context()) as server:
        return check(service(server.port, **options))


def test_https_with_a_valid_certificate(pki: Pki) -> None:
    result = check_https(pki.valid, ca_file=pki.ca_file, http_body=body(b"green"))
    days = (pki.valid.not_after - datetime.now(UTC)).days
    assert result.reason is Reason.OK
    assert result.detail == (
        f"HTTP 200 OK; certificate valid until {pki.valid.not_after:%Y-%m-%d} ({days} days)"
    )


def test_http_kind_with_tls_option_is_https(pki: Pki) -> None:
    assert check_https(pki.valid, check=Kind.HTTP, tls=True, ca_file=pki.ca_file).ok


def test_https_with_an_expired_certificate(pki: Pki) -> None:
    result = check_https(pki.expired, ca_file=pki.ca_file)
    assert result.reason is Reason.TLS
    assert result.detail == "certificate verification failed: certificate has expired"
    unverified = check_https(pki.expired, tls_verify=False)
    assert unverified.reason is Reason.TLS
    assert unverified.detail.startswith("certificate expired ")


def test_https_with_an_expiring_certificate(pki: Pki) -> None:
    result = check_https(pki.expiring, ca_file=pki.ca_file)
    assert result.reason is Reason.CERTIFICATE_EXPIRING
    assert result.detail == (
        f"HTTP 200 OK; certificate expires {pki.expiring.not_after:%Y-%m-%d %H:%M} UTC "
        "(2 days left)"
    )


def test_a_bad_status_outranks_an_expiring_certificate(pki: Pki) -> None:
    result = check_https(pki.expiring, ca_file=pki.ca_file, http_path="/down")
    assert result.reason is Reason.HTTP_STATUS


def test_https_with_a_wrong_host_name(pki: Pki) -> None:
    result = check_https(pki.wrong_host, ca_file=pki.ca_file, server_name="localhost")
    assert result.reason is Reason.TLS
    assert "Hostname mismatch" in result.detail


def test_https_with_a_self_signed_certificate(pki: Pki) -> None:
    result = check_https(pki.self_signed, ca_file=pki.ca_file)
    assert result.reason is Reason.TLS
    assert result.detail == "certificate verification failed: self-signed certificate"
    assert check_https(pki.self_signed, tls_verify=False).ok


def test_https_sends_the_server_name_as_host(pki: Pki) -> None:
    with web_server(pki.valid.server_context()) as server:
        svc = service(server.port, check=Kind.HTTPS, ca_file=pki.ca_file, server_name="localhost")
        assert check(svc).ok
        assert server.requests[0][1]["Host"] == f"localhost:{server.port}"


def test_https_against_a_plain_http_server(web: WebServer) -> None:
    result = check(service(web.port, check=Kind.HTTPS, tls_verify=False))
    assert result.reason is Reason.TLS


def test_https_transcript_tells_tls(pki: Pki) -> None:
    transcript = Transcript()
    with web_server(pki.valid.server_context()) as server:
        assert check(service(server.port, check=Kind.HTTPS, ca_file=pki.ca_file), transcript).ok
    infos = [e.data.decode() for e in transcript.entries if e.direction == "info"]
    assert len(infos) == 3
    assert infos[1].startswith("TLS TLSv1.3, cipher ")
    assert infos[2].startswith("certificate subject CN=valid server, ")


# --- the parts that do no I/O --------------------------------------------------


@pytest.mark.parametrize(
    ("options", "host"),
    [
        ({"port": 80}, "127.0.0.1"),
        ({"port": 8080}, "127.0.0.1:8080"),
        ({"port": 443, "check": Kind.HTTPS}, "127.0.0.1"),
        ({"port": 80, "check": Kind.HTTPS}, "127.0.0.1:80"),
        ({"port": 80, "server_name": "www.example.com"}, "www.example.com"),
        ({"port": 80, "host": "::1"}, "[::1]"),
        ({"port": 81, "host": "::1"}, "[::1]:81"),
        ({"port": 80, "host": "bücher.example"}, "xn--bcher-kva.example"),
    ],
)
def test_host_header(options: dict[str, Any], host: str) -> None:
    svc = service(**options)
    request = request_bytes(svc, svc.check is Kind.HTTPS)
    assert request.split(b"\r\n")[1] == b"Host: " + host.encode()


def test_request_target_is_escaped_but_not_twice() -> None:
    request = request_bytes(service(80, http_path="/a b/ü?q=%41&x=1\r\nX: y"), False)
    assert request.split(b"\r\n")[0] == b"GET /a%20b/%C3%BC?q=%41&x=1%0D%0AX:%20y HTTP/1.1"


def test_parse_head() -> None:
    head = parse_head(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After:  120 \r\nX-Long: one\r\n two\r\n\r\n"
    )
    assert head.status == 503
    assert head.status_text == "HTTP 503 Service Unavailable"
    assert head.headers == (("retry-after", "120"), ("x-long", "one two"))
    assert parse_head(b"HTTP/1.0 200 OK\n\n").headers == ()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", 12),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\n\r\n", 12),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            "chunked",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "close"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "close"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", "none"),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", "none"),
    ],
)
def test_framing(head: bytes, expected: object) -> None:
    assert framing(parse_head(head)) == expected


@pytest.mark.parametrize("value", [b"12, 13", b"-1", b"twelve", b"\xd9\xa1"])
def test_invalid_content_length(value: bytes) -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n")
    with pytest.raises(CheckFailed, match="invalid Content-Length"):
        framing(head)


def test_chunked_decoder_fed_byte_by_byte() -> None:
    wire = b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\nafter"
    decoder = ChunkedDecoder()
    for i, byte in enumerate(wire):
        assert not decoder.done, i
        decoder.feed(bytes([byte]))
        if decoder.done:
            assert wire[i + 1 :] == b"after"
            break
    assert decoder.done
    assert bytes(decoder.body) == b"hello, world"


@pytest.mark.parametrize(
    "wire",
    [b"5\r\nhello!\r\n", b"x\r\n", b"\r\n", b"1" * 17 + b"\r\n", b"5" * 9000],
)
def test_chunked_decoder_rejects_malformed_input(wire: bytes) -> None:
    with pytest.raises(CheckFailed, match="chunk"):
        ChunkedDecoder().feed(wire)
