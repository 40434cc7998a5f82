"""The streaming proxy core against real aiohttp origins on loopback (no socket mocks).

A tiny proxy app calls `Upstream.send()` + `relay()` the way gateway/app.py does and maps
GatewayError to its status. Streaming is proven by hand-offs (an origin that waits for an
event the client sets after seeing the first chunk), never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import ipaddress
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from yarl import URL

from gateway.config.settings import Address, Limits, Settings, Timeouts
from gateway.errors import GatewayError
from gateway.proxy.upstream import Upstream, _arrived_whole, relay

CHUNK = 64 * 1024
DROP = ("PAYMENT-SIGNATURE", "X-PAYMENT", "X-Payer")


@dataclass
class OriginState:
    hits: int = 0
    peers: list[int] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first_chunk_seen: asyncio.Event = field(default_factory=asyncio.Event)
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    body_errors: list[BaseException] = field(default_factory=list)


@dataclass
class ProxyState:
    errors: list[GatewayError] = field(default_factory=list)


ORIGIN = web.AppKey("origin", OriginState)
UPSTREAM = web.AppKey("upstream", Upstream)
BASE = web.AppKey("base", str)
PROXY = web.AppKey("proxy", ProxyState)


# --- the origin ---------------------------------------------------------------------------


async def echo(request: web.Request) -> web.Response:
    state = request.app[ORIGIN]
    state.hits += 1
    peername = request.transport.get_extra_info("peername") if request.transport else None
    state.peers.append(peername[1] if peername else -1)
    try:
        body = await request.read()
    except BaseException as exc:  # a cancelled handler counts: the body never arrived
        state.body_errors.append(exc)
        raise
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": list(request.headers.items()),
            "body_len": len(body),
            "body_sha": hashlib.sha256(body).hexdigest(),
        }
    )


async def sized(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    return web.Response(body=b"a" * n, content_type="application/octet-stream")


async def gzipped(request: web.Request) -> web.Response:
    raw = gzip.compress(b"hello gzip " * 1000)
    return web.Response(
        body=raw, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    )


async def hop(request: web.Request) -> web.Response:
    return web.Response(
        text="ok",
        headers={
            "Connection": "X-Internal",
            "X-Internal": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "Trailer": "X-Checksum",
            "X-Kept": "kept",
        },
    )


async def gated_stream(request: web.Request) -> web.StreamResponse:
    state = request.app[ORIGIN]
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"first-chunk")
    await state.release.wait()
    await resp.write(b"second-chunk")
    await resp.write_eof()
    return resp


async def endless(request: web.Request) -> web.StreamResponse:
    state = request.app[ORIGIN]
    resp = web.StreamResponse()
    await resp.prepare(request)
    block = b"e" * CHUNK
    try:
        while True:
            await resp.write(block)
    except ConnectionError:
        state.client_gone.set()
        return resp  # quietly: the test looks for error logs from the proxy
    except asyncio.CancelledError:
        state.client_gone.set()
        raise


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response(text="late")


async def no_read_hang(request: web.Request) -> web.Response:
    # Neither reads the upload nor answers until the test is over. (With its reading paused,
    # this server would not even notice the proxy hanging up, so it cannot time out itself.)
    await request.app[ORIGIN].release.wait()
    return web.Response(text="late")


async def reset_mid_body(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    if request.match_info["kind"] == "length":
        resp.content_length = 1_000_000
    await resp.prepare(request)
    await resp.write(b"r" * CHUNK)
    assert request.transport is not None
    request.transport.abort()
    return resp


async def upload_gated(request: web.Request) -> web.Response:
    state = request.app[ORIGIN]
    got = 0
    while got < CHUNK:
        chunk = await request.content.readany()
        if not chunk:
            break
        got += len(chunk)
    state.first_chunk_seen.set()
    rest = await request.read()
    return web.json_response({"received": got + len(rest)})


async def status_only(request: web.Request) -> web.Response:
    status = int(request.match_info["status"])
    return web.Response(status=status, headers={"ETag": '"v1"'})


async def refuse_early(request: web.Request) -> web.Response:
    # Answers without reading the upload, as origins with their own size limit do.
    return web.Response(status=413, text="origin says too big")


async def big_header(request: web.Request) -> web.Response:
    return web.Response(text="ok", headers={"Content-Security-Policy": "x" * 20000})


def origin_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[ORIGIN] = OriginState()
    app.router.add_get("/bytes/{n}", sized)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/hop", hop)
    app.router.add_get("/gated", gated_stream)
    app.router.add_get("/endless", endless)
    app.router.add_get("/hang", hang)
    app.router.add_post("/no-read-hang", no_read_hang)
    app.router.add_get("/reset/{kind}", reset_mid_body)
    app.router.add_post("/upload-gated", upload_gated)
    app.router.add_get("/status/{status}", status_only)
    app.router.add_post("/refuse-early", refuse_early)
    app.router.add_get("/big-header", big_header)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


# --- the proxy under test ---------------------------------------------------------------


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    upstream = request.app[UPSTREAM]
    state = request.app[PROXY]
    rel = request.rel_url
    try:
        resp = await upstream.send(
            request,
            base_url=request.app[BASE],
            path=rel.raw_path,
            query=rel.raw_query_string,
            add_headers={"X-Payer": "0xpayer"},
            drop_headers=DROP,
        )
    except GatewayError as exc:
        state.errors.append(exc)
        return web.Response(status=exc.status, text=exc.detail)
    if request.headers.get("X-Test-Discard"):
        await upstream.discard(resp)
        return web.Response(text="discarded")
    return await relay(request, resp, extra_headers={"PAYMENT-RESPONSE": "pr"}, expose_x402=True)


def settings_for(base: str, **overrides: Any) -> Settings:
    settings = Settings(
        source="test",
        listen=Address("127.0.0.1", 0),
        upstream=base,
        routes=(),
        timeouts=Timeouts(connect=2.0, read=5.0, request_body=5.0),
    )
    return replace(settings, **overrides)


def proxy_app(settings: Settings, base: str | None = None) -> web.Application:
    app = web.Application()
    app[PROXY] = ProxyState()
    app[BASE] = base or settings.upstream
    app[UPSTREAM] = Upstream(settings)

    async def pool(app: web.Application) -> AsyncIterator[None]:
        await app[UPSTREAM].start()
        yield
        await app[UPSTREAM].close()

    app.cleanup_ctx.append(pool)
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    return app


ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class ProxyServer:
    """The proxy app served the way production serves it (aiohttp's TestServer would turn
    on handler cancellation, which production does not use by default)."""

    app: web.Application
    runner: web.AppRunner
    port: int


ProxyFactory = Callable[..., Awaitable[ProxyServer]]


@pytest.fixture
async def serve_proxy() -> AsyncIterator[ProxyFactory]:
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application, **runner_kwargs: Any) -> ProxyServer:
        runner = web.AppRunner(app, access_log=None, **runner_kwargs)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return ProxyServer(app, runner, port)

    yield serve
    for runner in reversed(runners):
        await runner.cleanup()


@dataclass
class Rig:
    origin: TestServer
    proxy: ProxyServer
    session: aiohttp.ClientSession

    @property
    def origin_state(self) -> OriginState:
        return self.origin.app[ORIGIN]  # type: ignore[index]

    @property
    def proxy_state(self) -> ProxyState:
        return self.proxy.app[PROXY]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.proxy.port}{path}"


@pytest.fixture
async def make_rig(
    aiohttp_server: ServerFactory, serve_proxy: ProxyFactory
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    sessions: list[aiohttp.ClientSession] = []

    async def make(*, runner: dict[str, Any] | None = None, **overrides: Any) -> Rig:
        origin = await aiohttp_server(origin_app())
        base = f"http://127.0.0.1:{origin.port}"
        proxy = await serve_proxy(proxy_app(settings_for(base, **overrides)), **(runner or {}))
        session = aiohttp.ClientSession(auto_decompress=False)
        sessions.append(session)
        return Rig(origin, proxy, session)

    yield make
    for session in sessions:
        await session.close()


@pytest.fixture
async def rig(make_rig: Callable[..., Awaitable[Rig]]) -> Rig:
    return await make_rig()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to the proxy; read one response (by its Content-Length, or to EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    return head + await reader.readexactly(int(value))
            return head + await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def assert_pool_free(rig: Rig) -> None:
    """With a pool of one connection, a leaked one would make this time out (504)."""
    async with rig.session.get(rig.url("/after")) as resp:
        assert resp.status == 200, await resp.text()


# --- methods, paths, bodies ---------------------------------------------------------------

BODY_METHODS = ("POST", "PUT", "PATCH", "PROPFIND")


@pytest.mark.parametrize(
    "method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"]
)
async def test_every_method_reaches_origin_with_exact_path(rig: Rig, method: str) -> None:
    path = "/v1/a%20b/%7Euser;p=1/x%2Cy?q=%2F&z=a+b&flag"
    body = os.urandom(3000) if method in BODY_METHODS else None
    # encoded=True: the test client must not normalise the path either.
    url = URL(rig.url(path), encoded=True)
    async with rig.session.request(method, url, data=body) as resp:
        assert resp.status == 200
        if method == "HEAD":
            assert await resp.read() == b""
            assert int(resp.headers["Content-Length"]) > 0
            return
        seen = await resp.json()
    assert seen["method"] == method
    assert seen["raw_path"] == path
    sent = dict((k.lower(), v) for k, v in seen["headers"])
    if body is None:
        assert seen["body_len"] == 0
        assert "transfer-encoding" not in sent
        assert sent.get("content-length", "0") == "0"
    else:
        assert seen["body_sha"] == hashlib.sha256(body).hexdigest()
        assert sent["content-length"] == str(len(body))


async def test_get_without_body_sends_no_framing_headers(rig: Rig) -> None:
    async with rig.session.get(rig.url("/plain")) as resp:
        seen = await resp.json()
    names = {k.lower() for k, _ in seen["headers"]}
    assert "content-length" not in names
    assert "transfer-encoding" not in names
    # aiohttp adds none of its own defaults to what the client sent.
    raw = await raw_exchange(
        rig.proxy.port, b"GET /bare HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    seen = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    names = {k.lower() for k, _ in seen["headers"]}
    assert not names & {"user-agent", "accept", "accept-encoding", "content-type"}


@pytest.mark.parametrize("size", [1, CHUNK - 1, 1024 * 1024 + 7])
async def test_request_bodies_with_length(rig: Rig, size: int) -> None:
    body = os.urandom(size)
    async with rig.session.post(rig.url("/upload"), data=body) as resp:
        seen = await resp.json()
    assert seen["body_len"] == size
    assert seen["body_sha"] == hashlib.sha256(body).hexdigest()


async def test_chunked_upload_is_forwarded_chunked(rig: Rig) -> None:
    parts = [os.urandom(n) for n in (10, CHUNK, 3 * CHUNK + 5, 1)]

    async def gen() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with rig.session.put(rig.url("/upload"), data=gen()) as resp:
        seen = await resp.json()
    whole = b"".join(parts)
    assert seen["body_len"] == len(whole)
    assert seen["body_sha"] == hashlib.sha256(whole).hexdigest()
    sent = {k.lower(): v for k, v in seen["headers"]}
    assert sent["transfer-encoding"] == "chunked"
    assert "content-length" not in sent


async def test_post_with_empty_body(rig: Rig) -> None:
    async with rig.session.post(rig.url("/empty"), data=b"") as resp:
        seen = await resp.json()
    assert seen["body_len"] == 0
    sent = {k.lower(): v for k, v in seen["headers"]}
    assert "transfer-encoding" not in sent


# --- responses --------------------------------------------------------------------------


async def test_response_content_length_preserved(rig: Rig) -> None:
    async with rig.session.get(rig.url("/bytes/300000")) as resp:
        assert resp.headers["Content-Length"] == "300000"
        assert "Transfer-Encoding" not in resp.headers
        assert len(await resp.read()) == 300000


async def test_small_response_already_arrived_is_relayed_whole(rig: Rig) -> None:
    """A small answer (here in memory with its head) goes out with the head in one write:
    the same status, headers, Content-Length and bytes as when streamed."""
    raw = await raw_exchange(rig.proxy.port, b"GET /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0] == "HTTP/1.1 200 OK"
    assert fields["content-length"] == "1000" and "transfer-encoding" not in fields
    assert fields["content-type"] == "application/octet-stream"
    assert fields["payment-response"] == "pr"
    assert "PAYMENT-RESPONSE" in fields["access-control-expose-headers"]
    assert body == b"a" * 1000
    await assert_pool_free(rig)


async def test_only_a_whole_framed_body_already_here_is_taken_at_once(rig: Rig) -> None:
    """`_arrived_whole` takes nothing that has not arrived: a body still coming (chunked, or
    gated by the origin) is streamed; a HEAD or a 204 has none."""
    base = f"http://127.0.0.1:{rig.origin.port}"
    fake = make_mocked_request("GET", "/")
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/bytes/64") as resp:
            await asyncio.wait_for(resp.content.wait_eof(), 5)  # all of it here, none read
            assert _arrived_whole(fake, resp) == b"a" * 64
        async with session.get(base + "/gated") as resp:
            assert _arrived_whole(fake, resp) is None  # chunked, its end not here
            rig.origin_state.release.set()
            await resp.read()
        async with session.get(base + "/status/204") as resp:
            assert _arrived_whole(fake, resp) is None
        async with session.head(base + "/bytes/64") as resp:
            assert _arrived_whole(make_mocked_request("HEAD", "/"), resp) is None


async def test_response_without_length_is_chunked(rig: Rig) -> None:
    rig.origin_state.release.set()
    async with rig.session.get(rig.url("/gated")) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in resp.headers
        assert await resp.read() == b"first-chunksecond-chunk"


async def test_gzip_bytes_pass_untouched(rig: Rig) -> None:
    expected = gzip.compress(b"hello gzip " * 1000)
    async with rig.session.get(rig.url("/gzip"), headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(expected))
        body = await resp.read()
    assert gzip.decompress(body) == b"hello gzip " * 1000
    assert len(body) == len(expected)


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(rig: Rig, status: int) -> None:
    async with rig.session.get(rig.url(f"/status/{status}")) as resp:
        assert resp.status == status
        assert resp.headers["ETag"] == '"v1"'
        assert await resp.read() == b""
    await assert_pool_free(rig)


async def test_extra_headers_replace_and_x402_exposed(rig: Rig) -> None:
    async with rig.session.get(rig.url("/bytes/3")) as resp:
        assert resp.headers.getall("PAYMENT-RESPONSE") == ["pr"]
        assert "PAYMENT-RESPONSE" in resp.headers["Access-Control-Expose-Headers"]


# --- header hygiene end to end -------------------------------------------------------------


async def test_hop_by_hop_stripped_from_response(rig: Rig) -> None:
    async with rig.session.get(rig.url("/hop")) as resp:
        assert await resp.text() == "ok"
        for name in ("X-Internal", "Keep-Alive", "Proxy-Authenticate", "Trailer"):
            assert name not in resp.headers
        assert resp.headers["X-Kept"] == "kept"


async def test_hop_by_hop_stripped_from_request(rig: Rig) -> None:
    raw = await raw_exchange(
        rig.proxy.port,
        b"GET /hop-req HTTP/1.1\r\nHost: front.example\r\n"
        b"Connection: close, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic eDp5\r\n"
        b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\n"
        b"PAYMENT-SIGNATURE: sig\r\nX-PAYMENT: v1\r\nx-payer: 0xspoof\r\nX-Kept: k\r\n\r\n",
    )
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    sent = json.loads(body)["headers"]
    names = {k.lower() for k, _ in sent}
    for name in (
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "payment-signature",
        "x-payment",
    ):
        assert name not in names, name
    assert [v for k, v in sent if k.lower() == "x-payer"] == ["0xpayer"]
    assert ("X-Kept", "k") in [tuple(p) for p in sent]


async def test_websocket_upgrade_forwarded_as_plain_request(rig: Rig) -> None:
    raw = await raw_exchange(
        rig.proxy.port,
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    names = {k.lower() for k, _ in json.loads(body)["headers"]}
    assert "upgrade" not in names
    assert "connection" not in names


async def test_host_and_forwarding_untrusted_peer(rig: Rig) -> None:
    headers = {
        "Host": "shop.example",
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=6.6.6.6",
    }
    async with rig.session.get(rig.url("/fwd"), headers=headers) as resp:
        sent = dict((await resp.json())["headers"])
    assert sent["Host"] == f"127.0.0.1:{rig.origin.port}"
    assert sent["X-Forwarded-For"] == "127.0.0.1"
    assert sent["X-Forwarded-Proto"] == "http"
    assert sent["X-Forwarded-Host"] == "shop.example"
    assert sent["Forwarded"] == "for=127.0.0.1;proto=http;host=shop.example"


async def test_forwarding_trusted_peer_appends(make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    headers = {
        "Host": "inner:8402",
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "shop.example",
        "Forwarded": "for=6.6.6.6;proto=https",
    }
    async with rig.session.get(rig.url("/fwd"), headers=headers) as resp:
        sent = dict((await resp.json())["headers"])
    assert sent["Host"] == f"127.0.0.1:{rig.origin.port}"
    assert sent["X-Forwarded-For"] == "6.6.6.6, 127.0.0.1"
    assert sent["X-Forwarded-Proto"] == "https"
    assert sent["X-Forwarded-Host"] == "shop.example"
    assert (
        sent["Forwarded"] == 'for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host="inner:8402"'
    )


async def test_base_url_path_prefix(
    aiohttp_server: ServerFactory, serve_proxy: ProxyFactory
) -> None:
    origin = await aiohttp_server(origin_app())
    base = f"http://127.0.0.1:{origin.port}/api/"
    proxy = await serve_proxy(proxy_app(settings_for(base)))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proxy.port}/v1/x?y=1") as resp,
    ):
        assert (await resp.json())["raw_path"] == "/api/v1/x?y=1"


async def test_origin_answering_before_reading_upload_is_relayed(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await make_rig(limits=Limits(connections=1))
    body = os.urandom(8 * 1024 * 1024)
    async with rig.session.post(rig.url("/refuse-early"), data=body) as resp:
        assert resp.status == 413
        assert await resp.text() == "origin says too big"
    await assert_pool_free(rig)


async def test_large_origin_header_passes(rig: Rig) -> None:
    async with (
        aiohttp.ClientSession(max_field_size=65536) as session,
        session.get(rig.url("/big-header")) as resp,
    ):
        assert resp.status == 200
        assert len(resp.headers["Content-Security-Policy"]) == 20000


# --- failures before the response head ----------------------------------------------------


async def test_connection_refused_is_502(serve_proxy: ProxyFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = await serve_proxy(proxy_app(settings_for(f"http://127.0.0.1:{port}")))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proxy.port}/x") as resp,
    ):
        assert resp.status == 502
        assert await resp.text() == f"connection refused to 127.0.0.1:{port}"


async def test_origin_hangs_is_504(make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(timeouts=Timeouts(connect=2.0, read=0.3))
    async with rig.session.get(rig.url("/hang")) as resp:
        assert resp.status == 504
        assert "sent no response for 0.3s" in await resp.text()


async def _close_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _reset_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _garbage_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SPDY/9 nonsense\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    ("origin", "detail"),
    [
        (_close_after_head, "closed the connection before answering"),
        (_reset_after_head, "before answering"),
        (_garbage_after_head, "sent an invalid HTTP response"),
    ],
    ids=["close", "reset", "garbage"],
)
async def test_origin_fails_before_head_is_502(
    serve_proxy: ProxyFactory,
    origin: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    detail: str,
) -> None:
    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await serve_proxy(proxy_app(settings_for(f"http://127.0.0.1:{port}")))
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{proxy.port}/x", data=b"abc") as resp,
        ):
            assert resp.status == 502
            assert detail in await resp.text()
    finally:
        server.close()
        await server.wait_closed()


async def test_origin_stops_reading_upload_is_504(make_rig: Callable[..., Awaitable[Rig]]) -> None:
    # aiohttp's server lingers (10 s by default) reading the rest of an upload nobody wants,
    # and does not notice the client hanging up meanwhile: keep that short here.
    rig = await make_rig(
        timeouts=Timeouts(connect=2.0, read=0.5, request_body=5.0),
        runner={"lingering_time": 0.5},
    )
    block = b"u" * CHUNK

    async def big() -> AsyncIterator[bytes]:
        for _ in range(2048):  # 128 MiB: far beyond every socket buffer on the way
            yield block

    try:
        async with rig.session.post(rig.url("/no-read-hang"), data=big()) as resp:
            assert resp.status == 504
            assert "stopped reading the request body" in await resp.text()
    finally:
        rig.origin_state.release.set()


# --- the client's body ---------------------------------------------------------------------


async def test_body_limit_by_content_length_refused_before_connecting(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await make_rig(limits=Limits(request_body=1000))
    async with rig.session.post(rig.url("/upload"), data=b"x" * 2000) as resp:
        assert resp.status == 413
    assert rig.origin_state.hits == 0
    async with rig.session.post(rig.url("/upload"), data=b"x" * 1000) as resp:
        assert (await resp.json())["body_len"] == 1000


async def test_body_limit_chunked(make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(limits=Limits(request_body=1000, connections=1))

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 1000

    async with rig.session.post(rig.url("/upload"), data=gen()) as resp:
        assert resp.status == 413
    await assert_pool_free(rig)


async def test_client_body_idle_timeout_is_408(make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(timeouts=Timeouts(connect=2.0, read=5.0, request_body=0.3))
    raw = await raw_exchange(
        rig.proxy.port,
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 408"), raw[:100]
    assert b"no request body for 0.3s" in raw


@pytest.mark.parametrize("cancel", [False, True], ids=["no-cancel", "handler-cancellation"])
async def test_client_abandons_upload(
    make_rig: Callable[..., Awaitable[Rig]], cancel: bool
) -> None:
    rig = await make_rig(limits=Limits(connections=1), runner={"handler_cancellation": cancel})
    _, writer = await asyncio.open_connection("127.0.0.1", rig.proxy.port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000
    )
    await writer.drain()
    async with asyncio.timeout(10):
        # Hang up only once the request is on its way to the origin.
        while not rig.origin_state.hits:
            await asyncio.sleep(0.02)
    writer.close()
    await writer.wait_closed()
    if not cancel:
        async with asyncio.timeout(10):
            while not rig.proxy_state.errors:
                await asyncio.sleep(0.02)
        assert rig.proxy_state.errors[0].status == 400
        assert rig.proxy_state.errors[0].reason == "incomplete_body"
    async with asyncio.timeout(10):
        while not rig.origin_state.body_errors:
            await asyncio.sleep(0.02)
    await assert_pool_free(rig)


# --- streaming, both ways, without timing --------------------------------------------------


async def test_response_is_streamed_not_buffered(rig: Rig) -> None:
    async with asyncio.timeout(10), rig.session.get(rig.url("/gated")) as resp:
        # The origin holds its second chunk until we have seen the first one.
        assert await resp.content.readexactly(len(b"first-chunk")) == b"first-chunk"
        rig.origin_state.release.set()
        assert await resp.content.read() == b"second-chunk"


async def test_request_body_is_streamed_not_buffered(rig: Rig) -> None:
    seen = rig.origin_state.first_chunk_seen

    async def gen() -> AsyncIterator[bytes]:
        yield b"1" * CHUNK
        # Only sent once the origin has read the first chunk.
        await seen.wait()
        yield b"2" * CHUNK

    async with asyncio.timeout(10), rig.session.post(rig.url("/upload-gated"), data=gen()) as resp:
        assert (await resp.json())["received"] == 2 * CHUNK


# --- failures after the head: truncation, disconnects, pool hygiene -----------------------


@pytest.mark.parametrize("kind", ["length", "chunked"])
async def test_origin_reset_mid_body_truncates_client(
    make_rig: Callable[..., Awaitable[Rig]], kind: str
) -> None:
    rig = await make_rig(limits=Limits(connections=1))
    async with asyncio.timeout(10), rig.session.get(rig.url(f"/reset/{kind}")) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await assert_pool_free(rig)


async def test_origin_stalls_mid_body_truncates_client(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await make_rig(timeouts=Timeouts(connect=2.0, read=0.3), limits=Limits(connections=1))
    try:
        async with asyncio.timeout(10), rig.session.get(rig.url("/gated")) as resp:
            assert await resp.content.readexactly(len(b"first-chunk")) == b"first-chunk"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    finally:
        rig.origin_state.release.set()
    await assert_pool_free(rig)


async def test_origin_reset_mid_body_http10_client_gets_reset(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.proxy.port)
    try:
        writer.write(b"GET /reset/chunked HTTP/1.0\r\nHost: h\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            with pytest.raises(ConnectionResetError):
                while await reader.read(CHUNK):
                    pass
    finally:
        writer.close()


@pytest.mark.parametrize("cancel", [False, True], ids=["no-cancel", "handler-cancellation"])
async def test_client_disconnect_releases_upstream(
    make_rig: Callable[..., Awaitable[Rig]], caplog: pytest.LogCaptureFixture, cancel: bool
) -> None:
    rig = await make_rig(limits=Limits(connections=1), runner={"handler_cancellation": cancel})
    caplog.set_level(logging.ERROR)
    async with aiohttp.ClientSession() as other:
        resp = await other.get(rig.url("/endless"))
        await resp.content.readexactly(CHUNK)
        resp.close()  # drops the connection mid-body
    async with asyncio.timeout(10):
        await rig.origin_state.client_gone.wait()
    await assert_pool_free(rig)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_discard_releases_upstream(make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(limits=Limits(connections=1))
    headers = {"X-Test-Discard": "1"}
    async with rig.session.get(rig.url("/endless"), headers=headers) as resp:
        assert await resp.text() == "discarded"
    async with asyncio.timeout(10):
        await rig.origin_state.client_gone.wait()
    async with rig.session.get(rig.url("/bytes/10"), headers=headers) as resp:
        assert await resp.text() == "discarded"
    await assert_pool_free(rig)


async def test_keepalive_connection_reused(rig: Rig) -> None:
    for _ in range(3):
        async with rig.session.get(rig.url("/reuse")) as resp:
            await resp.read()
    assert len(set(rig.origin_state.peers)) == 1


async def test_send_before_start_is_an_error() -> None:
    upstream = Upstream(settings_for("http://127.0.0.1:1"))
    with pytest.raises(RuntimeError, match="before start"):
        await upstream.send(None, base_url="http://127.0.0.1:1", path="/")  # type: ignore[arg-type]


def test_bad_base_url_rejected() -> None:
    with pytest.raises(ValueError, match="origin URL"):
        Upstream(settings_for("ftp://example.com"))
