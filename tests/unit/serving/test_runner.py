"""gateway.serving (runner, listener, state): real processes, real sockets on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import http_parser, web_protocol

from gateway.serving import runner as server
from gateway.serving import state
from gateway.serving.connection import HeadWatcher
from tests.procs import free_port
from tests.unit.serving._server_proc import (
    Served,
    connect,
    get,
    read_all,
    read_message,
    read_response,
    request_bytes,
)

Serve = Callable[..., Served]


@pytest.fixture
def serve() -> Iterator[Serve]:
    started: list[Served] = []

    def start(opts: dict[str, Any], env: dict[str, str] | None = None) -> Served:
        proc = Served(opts, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        connect(port, timeout=2).close()


# --- graceful shutdown ------------------------------------------------------------------


def test_sigterm_lets_in_flight_request_finish_and_refuses_new_connections(
    serve: Serve, pool: ThreadPoolExecutor
) -> None:
    srv = serve({"grace": 10})
    port, admin = srv.port, srv.admin_port
    assert get(admin, "/healthz") == (200, b'{"status": "ok"}')

    def keepalive_request() -> tuple[int, str, bytes, bytes]:
        with connect(port) as sock:
            sock.sendall(request_bytes("/sleep?s=1.5", close=False))
            status, headers, body = read_message(sock)
            return status, headers.get("connection", ""), body, read_all(sock)

    pending = pool.submit(keepalive_request)
    srv.wait_event("handler_started")

    srv.signal(signal.SIGTERM)
    srv.wait_event("draining")
    assert_refused(port)
    status, body = get(admin, "/healthz")
    assert status == 503 and b"draining" in body
    status, _ = get(admin, "/readyz")
    assert status == 503

    # Completed, told the client (which asked for keep-alive) so, then closed.
    assert pending.result(timeout=10) == (200, "close", b"slept", b"")
    assert srv.wait(10) == 0
    names = srv.names()
    assert names.index("handler_finished") < names.index("app_cleanup") < names.index("stopped")
    assert "handler_cancelled" not in names
    assert srv.wait_event("stopped")["forced"] is False


def test_grace_expiry_cancels_the_handler_and_exits_cleanly(
    serve: Serve, pool: ThreadPoolExecutor
) -> None:
    srv = serve({"grace": 0.5})
    pending = pool.submit(get, srv.port, "/sleep?s=30")
    srv.wait_event("handler_started")
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait(10) == 0
    assert time.monotonic() - started < 5
    assert "handler_cancelled" in srv.names()
    with pytest.raises(ConnectionError):
        pending.result(timeout=5)


def test_second_signal_forces_exit(serve: Serve, pool: ThreadPoolExecutor) -> None:
    srv = serve({"grace": 60})
    pending = pool.submit(get, srv.port, "/sleep?s=60")
    srv.wait_event("handler_started")
    srv.signal(signal.SIGTERM)
    srv.wait_event("draining")
    time.sleep(0.2)
    assert srv.proc.poll() is None  # still waiting for the request
    srv.signal(signal.SIGINT)
    assert srv.wait(10) == 1
    names = srv.names()
    assert "handler_cancelled" in names and "app_cleanup" in names
    assert srv.wait_event("stopped")["forced"] is True
    with pytest.raises(ConnectionError):
        pending.result(timeout=5)


def test_idle_keepalive_connection_does_not_hold_up_shutdown(serve: Serve) -> None:
    srv = serve({"grace": 60})
    with connect(srv.port) as sock:
        sock.sendall(request_bytes("/ok", close=False))
        status, _ = read_response(sock)
        assert status == 200
        started = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert srv.wait(10) == 0
        assert time.monotonic() - started < 5
        assert read_all(sock) == b""


def test_what_start_up_built_is_frozen_out_of_the_collectors_reach(serve: Serve) -> None:
    """Modules, settings and the app's parts are moved to the permanent generation once
    started, so full collections scan only what requests leave behind; young collections
    run every GC_YOUNG_THRESHOLD allocations, not every 700."""
    srv = serve({})
    status, body = get(srv.port, "/frozen")
    assert status == 200
    frozen, young = (int(n) for n in body.split())
    assert frozen > 10_000  # the imports alone: aiohttp, structlog, pydantic...
    assert young == server.GC_YOUNG_THRESHOLD


def test_signal_during_a_stuck_startup_stops_the_process(serve: Serve) -> None:
    srv = serve({"startup_delay": 60})
    srv.wait_event("startup_begun")
    srv.signal(signal.SIGTERM)
    assert srv.wait(10) == 0
    names = srv.names()
    assert "startup_interrupted" in names and "app_cleanup" in names
    assert "listening" not in names


# --- connection cap and slow clients -------------------------------------------------------


def test_connections_beyond_the_cap_wait_in_the_backlog(
    serve: Serve, pool: ThreadPoolExecutor
) -> None:
    """At the cap with no idle connection to evict, a new client waits in the backlog."""
    srv = serve({"connections": 2, "header": 30})
    port = srv.port
    busy = [pool.submit(get, port, "/sleep?s=2") for _ in range(2)]
    srv.wait_event("handler_started", count=2)

    third = connect(port, timeout=0.8)  # the kernel completes the handshake...
    third.sendall(request_bytes("/ok"))
    with pytest.raises(TimeoutError):  # ...but the server does not take it
        third.recv(1)
    srv.wait_event("connection_limit_reached")

    assert [f.result(timeout=10) for f in busy] == [(200, b"slept")] * 2
    third.settimeout(5)
    assert read_response(third)[0] == 200
    third.close()


def test_at_the_cap_the_longest_idle_keepalive_connection_is_evicted(serve: Serve) -> None:
    """Issue 12 item 5: idle keep-alive connections never lock a new client out (nginx's
    reuse of its "reusable" connections): the longest-idle one is closed for it."""
    srv = serve({"connections": 2, "header": 30})
    port = srv.port
    first, second = connect(port), connect(port)
    for sock in (first, second):
        sock.sendall(request_bytes("/ok", close=False))
        assert read_response(sock)[0] == 200

    third = connect(port, timeout=2)
    third.sendall(request_bytes("/ok", close=False))
    assert read_response(third)[0] == 200  # taken at once, not left in the backlog
    assert first.recv(1) == b""  # the longest idle was closed for it
    second.sendall(request_bytes("/ok", close=False))
    assert read_response(second)[0] == 200  # the other one was left alone
    for sock in (first, second, third):
        sock.close()


def test_a_connection_handling_a_request_is_never_evicted(
    serve: Serve, pool: ThreadPoolExecutor
) -> None:
    srv = serve({"connections": 2, "header": 30})
    port = srv.port
    slow = pool.submit(get, port, "/sleep?s=1.5")
    srv.wait_event("handler_started")
    idle = connect(port)
    idle.sendall(request_bytes("/ok", close=False))
    assert read_response(idle)[0] == 200
    assert get(port, "/ok", timeout=5)[0] == 200  # the idle one made room
    assert slow.result(timeout=10) == (200, b"slept")
    assert idle.recv(1) == b""
    idle.close()


def test_a_slow_later_request_head_is_cut_off_but_an_idle_connection_is_kept(
    serve: Serve,
) -> None:
    """Every head is bounded by the head timeout, from its first byte; the time between
    requests is keep-alive, not a head."""
    srv = serve({"header": 1, "keepalive": 30})
    port = srv.port
    quiet, slow = connect(port), connect(port)
    for sock in (quiet, slow):
        sock.sendall(request_bytes("/ok", close=False))
        assert read_response(sock)[0] == 200
    time.sleep(1.5)  # longer than the head timeout, with no byte sent: keep-alive
    started = time.monotonic()
    slow.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
    slow.settimeout(5)
    assert read_all(slow).startswith(b"HTTP/1.1 408 ")
    assert 0.8 < time.monotonic() - started < 4
    quiet.sendall(request_bytes("/ok", close=False))
    assert read_response(quiet)[0] == 200
    for sock in (quiet, slow):
        sock.close()


def test_stalled_request_head_is_closed_after_the_timeout(
    serve: Serve, pool: ThreadPoolExecutor
) -> None:
    srv = serve({"header": 1})
    port = srv.port

    def stalled_head() -> tuple[float, bytes]:
        with connect(port) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /ok HT")
            data = read_all(sock)
            return time.monotonic() - started, data

    def silent() -> tuple[float, bytes]:
        with connect(port) as sock:
            started = time.monotonic()
            data = read_all(sock)
            return time.monotonic() - started, data

    def trickle() -> tuple[float, bytes]:
        # Data arriving slowly does not extend the deadline: it counts from connect.
        with connect(port) as sock:
            started = time.monotonic()
            try:
                for byte in b"GET /ok HTTP/1.1\r\nHost: x\r\n":
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            data = read_all(sock)
            return time.monotonic() - started, data

    results = [pool.submit(fn) for fn in (stalled_head, silent, trickle)]
    # A head completed in time is served even when the handler outlasts the head timeout.
    assert get(port, "/sleep?s=1.5") == (200, b"slept")
    (t_stalled, stalled), (t_silent, nothing), (t_trickle, trickled) = (
        r.result(timeout=10) for r in results
    )
    assert stalled.startswith(b"HTTP/1.1 408 ")
    assert nothing == b""
    assert trickled.startswith(b"HTTP/1.1 408 ")
    for elapsed in (t_stalled, t_silent, t_trickle):
        assert 0.8 < elapsed < 4
    srv.wait_event("request_head_timeout", count=3)
    received = {e["received"] for e in srv.events if e["event"] == "request_head_timeout"}
    assert {0, len(b"GET /ok HT")} <= received


# --- workers ------------------------------------------------------------------------------


def test_workers_share_the_port_and_stop_together(serve: Serve) -> None:
    port = free_port()
    srv = serve({"workers": 2, "port": port, "grace": 10})
    pids = {srv.wait_event("listening", count=n)["pid"] for n in (1, 2)}
    assert len(pids) == 2 and srv.proc.pid not in pids
    status, body = get(port, "/ok")
    assert status == 200 and int(body.split()[1]) in pids
    time.sleep(0.3)
    assert [e["event"] for e in srv.events].count("admin_listening") == 1

    srv.signal(signal.SIGTERM)
    assert srv.wait(15) == 0
    assert sum(1 for e in srv.events if e.get("event") == "stopped") == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_dead_worker_stops_the_rest(serve: Serve) -> None:
    srv = serve({"workers": 2, "port": free_port(), "grace": 10})
    pids = [srv.wait_event("listening", count=n)["pid"] for n in (1, 2)]
    os.kill(pids[0], signal.SIGKILL)
    assert srv.wait(15) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie left for init to reap."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_drain_when_the_supervisor_is_killed(serve: Serve) -> None:
    srv = serve({"workers": 2, "port": free_port(), "grace": 10})
    pids = [srv.wait_event("listening", count=n)["pid"] for n in (1, 2)]
    srv.signal(signal.SIGKILL)
    srv.wait(10)
    srv.wait_event("supervisor_gone", count=2)
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.05)


def test_workers_need_a_fixed_port(serve: Serve) -> None:
    srv = serve({"workers": 2, "port": 0})
    assert srv.wait(15) != 0
    assert "fixed listen port" in srv.stderr() + "".join(srv.raw)


def test_busy_port_fails_at_start(serve: Serve) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        srv = serve({"port": taken.getsockname()[1]})
        assert srv.wait(15) == 1
    assert "server_failed" in srv.names()


# --- the C parser guard --------------------------------------------------------------------


def test_require_c_parser_accepts_this_install() -> None:
    server.require_c_parser()


def test_require_c_parser_refuses_no_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    with pytest.raises(RuntimeError, match="AIOHTTP_NO_EXTENSIONS"):
        server.require_c_parser()


def test_require_c_parser_refuses_the_python_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    with pytest.raises(RuntimeError, match="C HTTP parser"):
        server.require_c_parser()


# --- pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "complete_at"),
    [
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], 0),
        ([b"GET / HTTP/1.1\r\nHost: x\r", b"\n", b"\r", b"\n"], 3),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n", b"\r\n"], 1),
        ([b"GET / HTTP/1.1\nHost: x\n\n"], 0),
        ([b"\r\n\r\n", b"GET / HTTP/1.1\r\n", b"\r\n"], 2),  # leading empty lines skipped
        ([b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X: y"], None),
    ],
)
def test_head_watcher(chunks: list[bytes], complete_at: int | None) -> None:
    watcher = HeadWatcher()
    done = [watcher.feed(chunk) for chunk in chunks]
    assert done == [i == complete_at for i in range(len(chunks))]
    assert watcher.received == sum(map(len, chunks))


async def test_in_flight_counts_and_signals_idle() -> None:
    in_flight = state.InFlight()
    release = asyncio.Event()

    async def request() -> None:
        async with in_flight.track():
            await release.wait()

    tasks = [asyncio.create_task(request()) for _ in range(3)]
    await asyncio.sleep(0)
    assert in_flight.count == 3
    idle = asyncio.create_task(in_flight.wait_idle())
    await asyncio.sleep(0.01)
    assert not idle.done()
    release.set()
    await asyncio.wait_for(idle, 1)
    assert in_flight.count == 0
    await asyncio.gather(*tasks)
    await asyncio.wait_for(in_flight.wait_idle(), 1)  # already idle: returns at once


async def test_in_flight_counts_down_on_cancellation() -> None:
    in_flight = state.InFlight()

    async def request() -> None:
        async with in_flight.track():
            await asyncio.sleep(60)

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    assert in_flight.count == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert in_flight.count == 0
