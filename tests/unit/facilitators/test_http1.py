"""JsonPoster against real servers on loopback: aiohttp's, and raw ones that answer in
chunks, close connections or never answer."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.facilitators.http1 import JsonPoster, NotSent
from tests.procs import free_port


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """An aiohttp server answering each POST with what it saw, and the peer port."""
    seen: list[dict[str, object]] = []

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append(
            {
                "path": request.path,
                "query": request.query_string,
                "auth": request.headers.get("Authorization"),
                "type": request.headers.get("Content-Type"),
                "body": await request.read(),
                "port": peer[1] if peer else None,
            }
        )
        return web.json_response({"ok": len(seen)})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/base")), seen
    await server.close()


async def test_posts_under_the_base_path_with_headers_and_keeps_the_connection(echo) -> None:  # type: ignore[no-untyped-def]
    url, seen = echo
    poster = JsonPoster(url, {"Authorization": "Bearer t"}, 2.0)
    try:
        assert await poster.post("verify", b'{"a":1}') == (200, b'{"ok": 1}')
        assert await poster.post("settle", b"{}") == (200, b'{"ok": 2}')
    finally:
        poster.close()
    assert [s["path"] for s in seen] == ["/base/verify", "/base/settle"]
    assert seen[0]["auth"] == "Bearer t" and seen[0]["type"] == "application/json"
    assert seen[0]["body"] == b'{"a":1}'
    assert seen[0]["port"] == seen[1]["port"]  # the same kept-alive connection


async def test_concurrent_posts_open_more_connections_then_reuse_them(echo) -> None:  # type: ignore[no-untyped-def]
    url, seen = echo
    poster = JsonPoster(url, {}, 2.0)
    try:
        await asyncio.gather(*(poster.post("verify", b"{}") for _ in range(5)))
        await asyncio.gather(*(poster.post("verify", b"{}") for _ in range(5)))
    finally:
        poster.close()
    assert len(seen) == 10
    assert len({s["port"] for s in seen}) <= 5


Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(reply: Reply) -> tuple[asyncio.Server, str, list[int]]:
    """A TCP server calling `reply` once per request head it reads; counts connections."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                await reply(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


async def test_chunked_answer_is_read_whole_and_the_connection_kept() -> None:
    async def chunked(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n'
        )
        await writer.drain()

    server, url, connections = await raw_server(chunked)
    poster = JsonPoster(url, {}, 2.0)
    try:
        assert await poster.post("verify", b"{}") == (200, b'{"a":1}')
        assert await poster.post("verify", b"{}") == (200, b'{"a":1}')
    finally:
        poster.close()
        server.close()
    assert len(connections) == 1


async def test_an_answer_in_several_segments_is_read_to_its_end() -> None:
    body = b'{"receipts":"' + b"x" * 200_000 + b'"}'

    async def slow(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body[:10])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[10:])
        await writer.drain()

    server, url, _ = await raw_server(slow)
    poster = JsonPoster(url, {}, 2.0)
    small = JsonPoster(url, {}, 2.0, max_answer=1000)
    try:
        assert await poster.post("", b"{}") == (200, body)
        with pytest.raises(aiohttp.ClientPayloadError, match="over 1000 bytes"):
            await small.post("", b"{}")
    finally:
        poster.close()
        small.close()
        server.close()


async def test_an_answer_arrived_whole_is_read_and_still_bounded() -> None:
    """An answer that comes in one write with its head (every small facilitator answer):
    returned whole, and refused past the size limit as a streamed one is."""
    body = b'{"receipts":"' + b"x" * 2000 + b'"}'

    async def whole(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()

    server, url, connections = await raw_server(whole)
    poster = JsonPoster(url, {}, 2.0)
    small = JsonPoster(url, {}, 2.0, max_answer=1000)
    try:
        assert await poster.post("", b"{}") == (200, body)
        assert await poster.post("", b"{}") == (200, body)
        with pytest.raises(aiohttp.ClientPayloadError, match="over 1000 bytes"):
            await small.post("", b"{}")
    finally:
        poster.close()
        small.close()
        server.close()
    assert len(connections) == 2  # the big answer's connection is not reused


async def test_an_empty_path_posts_to_the_url_itself(echo) -> None:  # type: ignore[no-untyped-def]
    url, seen = echo
    poster = JsonPoster(url + "/v2/key?x=1", {}, 2.0)
    try:
        await poster.post("", b"{}")
        await poster.post("verify", b"{}")
    finally:
        poster.close()
    assert [s["path"] for s in seen] == ["/base/v2/key", "/base/v2/key/verify"]
    assert seen[0]["query"] == "x=1"


async def test_connection_close_answer_is_not_reused() -> None:
    async def closing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 422 X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server, url, connections = await raw_server(closing)
    poster = JsonPoster(url, {}, 2.0)
    try:
        assert await poster.post("settle", b"{}") == (422, b"{}")
        assert await poster.post("settle", b"{}") == (422, b"{}")
    finally:
        poster.close()
        server.close()
    assert len(connections) == 2


async def test_an_idle_connection_the_server_closed_is_dropped_before_use() -> None:
    async def then_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()  # no Connection: close: the client learns it from the socket

    server, url, connections = await raw_server(then_close)
    poster = JsonPoster(url, {}, 2.0)
    try:
        assert await poster.post("verify", b"{}") == (200, b"{}")
        await asyncio.sleep(0.1)  # the close reaches the client's idle connection
        assert await poster.post("verify", b"{}") == (200, b"{}")
    finally:
        poster.close()
        server.close()
    assert len(connections) == 2


async def test_a_connection_lost_after_the_request_is_an_aiohttp_error_not_not_sent() -> None:
    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server, url, _ = await raw_server(hang_up)
    poster = JsonPoster(url, {}, 2.0)
    try:
        with pytest.raises(aiohttp.ClientError):
            await poster.post("settle", b"{}")
    finally:
        poster.close()
        server.close()


async def test_no_answer_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    server, url, _ = await raw_server(silent)
    poster = JsonPoster(url, {}, 0.3)
    try:
        with pytest.raises(TimeoutError):
            await poster.post("verify", b"{}")
    finally:
        poster.close()
        server.close()


async def test_refused_is_not_sent() -> None:
    poster = JsonPoster(f"http://127.0.0.1:{free_port()}", {}, 2.0)
    with pytest.raises(NotSent, match="cannot connect"):
        await poster.post("settle", b"{}")


def test_bad_urls_and_headers_are_refused() -> None:
    with pytest.raises(ValueError):
        JsonPoster("ftp://x", {}, 1.0)
    with pytest.raises(ValueError):
        JsonPoster("http://x", {"X-A": "a\r\nInjected: 1"}, 1.0)


async def test_https_with_the_certificate_checked(tmp_path: Path) -> None:
    """A TLS facilitator (the usual case: https://x402.org/facilitator): answered and kept
    alive under a context trusting its certificate; refused, never sent, under the default
    one (a self-signed certificate the system does not trust)."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    ports: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ports.append(peer[1] if peer else 0)
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=served).start()
    url = f"https://127.0.0.1:{port}/f"
    poster = JsonPoster(url, {}, 5.0, tls=ssl.create_default_context(cafile=str(cert)))
    untrusting = JsonPoster(url, {}, 5.0)
    try:
        assert await poster.post("verify", b"{}") == (200, b'{"path": "/f/verify"}')
        assert await poster.post("settle", b"{}") == (200, b'{"path": "/f/settle"}')
        assert len(set(ports)) == 1
        with pytest.raises(NotSent, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.post("settle", b"{}")
    finally:
        poster.close()
        untrusting.close()
        await runner.cleanup()


async def test_idle_connections_past_keepalive_are_closed_not_reused(echo) -> None:  # type: ignore[no-untyped-def]
    url, seen = echo
    poster = JsonPoster(url, {}, 2.0)
    try:
        await asyncio.gather(*(poster.post("verify", b"{}") for _ in range(3)))
        idle = [proto for proto, _ in poster._idle]
        assert len(idle) == 3
        poster._keepalive = 0.05
        await asyncio.sleep(0.1)
        await poster.post("verify", b"{}")
        assert all(not proto.is_connected() for proto in idle)
        assert seen[-1]["port"] not in {s["port"] for s in seen[:3]}
    finally:
        poster.close()


async def test_credentials_in_the_url_are_sent_as_basic_auth_not_in_the_path(echo) -> None:  # type: ignore[no-untyped-def]
    url, seen = echo
    poster = JsonPoster(url.replace("http://", "http://user:k%40y@"), {}, 2.0)
    try:
        await poster.post("", b"{}")
    finally:
        poster.close()
    assert seen[0]["auth"] == aiohttp.BasicAuth("user", "k@y").encode()
    assert seen[0]["path"] == "/base"
