"""Issue 12 item 5: idle keep-alive connections must not lock fresh clients out, and every
request head is bounded in time, not only the first on a connection.

Real gateway processes (`x402-gateway serve`) in front of the lenient origin. The 1 s client
timeout on fresh requests is the bound the issue sets for "still answered", not a performance
assertion; the other waits are generous bounds on behaviour (a connection closed or not).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gateway_proc import GatewayProcess, gateway
from tests.e2e.lenient_parts import LenientOrigin, parse_reply

pytestmark = pytest.mark.e2e
IDLE_CONNECTIONS = 2000  # against the shipped limits.connections of 1024
FRESH_CLIENTS = 5
FRESH_TIMEOUT = 1.0  # the bound for "fresh clients are still answered"
FLOOD_REQUEST_TIMEOUT = 5.0  # for each flood connection's one request (a loaded CI machine)
# The slow-head gateway gets request_header 2s instead of the shipped 10s, only to keep the
# test short; keepalive stays at its shipped 75s (it bounded a second head before the fix).
REQUEST_HEADER = 2.0
CUT_OFF_BOUND = REQUEST_HEADER + 4.0


def free_only(upstream: str, **extra: Any) -> dict[str, Any]:
    """No priced route (so no facilitator): every other setting is the shipped default."""
    return {"upstream": upstream, "routes": [{"path": "/free/*", "price": "free"}], **extra}


@pytest.fixture(scope="module")
def lenient() -> Iterator[LenientOrigin]:
    origin = LenientOrigin().start()
    yield origin
    origin.stop()


def read_response(sock: socket.socket) -> int:
    """Read one framed response (Content-Length or chunked) off a kept-alive connection;
    its status. Raises TimeoutError (socket timeout) or ConnectionError."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    reply = parse_reply(head + b"\r\n\r\n")
    length = reply.header("Content-Length")
    while (len(body) < int(length)) if length is not None else not body.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return reply.status


def one_request(port: int, timeout: float, keep: bool = True) -> tuple[socket.socket, int]:
    sock = socket.create_connection(("127.0.0.1", port), timeout)
    try:
        close = b"" if keep else b"Connection: close\r\n"
        sock.sendall(b"GET /free/idle HTTP/1.1\r\nHost: gw\r\n" + close + b"\r\n")
        return sock, read_response(sock)
    except BaseException:
        sock.close()
        raise


def test_two_thousand_idle_keepalive_connections_do_not_lock_out_fresh_clients(
    lenient: LenientOrigin, tmp_path: Path
) -> None:
    idle: list[socket.socket] = []
    with gateway(free_only(lenient.url), tmp_path, ready=False) as gw:
        try:
            for n in range(IDLE_CONNECTIONS):
                try:
                    sock, status = one_request(gw.port, FLOOD_REQUEST_TIMEOUT)
                except (TimeoutError, ConnectionError) as exc:
                    pytest.fail(f"idle connection #{n + 1} was never answered: {exc!r}")
                idle.append(sock)
                assert status == 200
            for n in range(FRESH_CLIENTS):
                try:
                    fresh, status = one_request(gw.port, FRESH_TIMEOUT, keep=False)
                except (TimeoutError, ConnectionError) as exc:
                    pytest.fail(f"fresh client #{n + 1} not answered within 1 s: {exc!r}")
                fresh.close()
                assert status == 200
        finally:
            for sock in idle:
                sock.close()


def closed_within(sock: socket.socket, seconds: float, drip: bytes) -> tuple[bool, bytes]:
    """Send `drip` every 0.5 s (a slowloris head that never ends) until the server closes
    the connection or `seconds` pass; whether it closed, and what it sent meanwhile."""
    deadline = time.monotonic() + seconds
    got = b""
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            sock.sendall(drip)
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


@pytest.fixture(scope="module")
def head_gw(
    lenient: LenientOrigin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    cfg = free_only(lenient.url, timeouts={"request_header": f"{REQUEST_HEADER:g}s"})
    with gateway(cfg, tmp_path_factory.mktemp("head"), ready=False) as gw:
        yield gw


def test_a_slow_first_request_head_is_cut_off(head_gw: GatewayProcess) -> None:
    """The harness can see a cut-off: the first head is bounded today (gateway/listener.py)."""
    with socket.create_connection(("127.0.0.1", head_gw.port), 5) as sock:
        sock.sendall(b"GET /free/slow HTTP/1.1\r\nHost: gw\r\n")
        closed, got = closed_within(sock, CUT_OFF_BOUND, b"X-Slow: 1\r\n")
    assert closed, "a first request head dripped for 6 s was never cut off"
    assert got.startswith(b"HTTP/1.1 408")


def test_a_slow_second_request_head_on_a_kept_alive_connection_is_cut_off(
    head_gw: GatewayProcess,
) -> None:
    sock, status = one_request(head_gw.port, 5)
    with contextlib.closing(sock):
        assert status == 200
        sock.sendall(b"GET /free/slow HTTP/1.1\r\nHost: gw\r\n")
        closed, _ = closed_within(sock, CUT_OFF_BOUND, b"X-Slow: 1\r\n")
    assert closed, (
        f"a second request head dripped for {CUT_OFF_BOUND:g} s was never cut off "
        f"(request_header is {REQUEST_HEADER:g} s)"
    )
