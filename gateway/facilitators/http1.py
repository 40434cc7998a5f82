"""JSON POSTs to one facilitator (or JSON-RPC node) on kept-alive HTTP/1.1 connections, on
aiohttp's own client protocol (`aiohttp.client_proto.ResponseHandler`: its C response parser,
Content-Length and chunked bodies, flow control, connection-lost errors).

Why not `ClientSession.post`: a paid request makes two facilitator POSTs, and the session's
per-request machinery (a `ClientRequest`, header multidicts, the payload object, cookie and
redirect handling, trace hooks, the connector's bookkeeping) costs ~150 µs of CPU per round
trip against ~70 µs for the same round trip on the same protocol with the request written as
bytes built once (`python -m bench.client_floor`). What stays ours is only what a facilitator
POST needs: the request head (fixed per endpoint), a pool of idle connections, the total
timeout. Everything read from the network goes through aiohttp's parser.

Semantics kept from the session it replaces: a connection that cannot be opened raises
`NotSent` (the request never left: a settle may go elsewhere); any failure after the request
was written raises the aiohttp or timeout error as it happens, never retried here (a POST is
not idempotent: aiohttp does not retry one either); idle connections are reused for
`KEEPALIVE` seconds, a closed one is dropped before use; at most `LIMIT` connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Mapping

from aiohttp import BasicAuth, ClientPayloadError, StreamReader
from aiohttp.client_proto import ResponseHandler
from yarl import URL

MAX_ANSWER = 1 << 20  # a facilitator's JSON answer is small; refuse to read a flood
LIMIT = 256  # connections open at once per endpoint, as the session's connector had
KEEPALIVE = 30.0  # seconds an idle connection is kept, as the session's connector had


class NotSent(Exception):
    """The connection could not be opened: the request never reached the endpoint."""


class JsonPoster:
    """POST bytes to paths under one base URL; the answer's status and body."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float,
        *,
        tls: ssl.SSLContext | None = None,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        """`tls`: the context for an https URL (default: the system's CAs, hostnames checked,
        as aiohttp's own default)."""
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self._host = url.raw_host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = tls or ssl.create_default_context()
        self._exact = url.raw_path_qs  # `post("")`: the URL itself, query string and all
        self._base_path = url.raw_path.rstrip("/") + "/"
        self._timeout = timeout
        self._max_answer = max_answer
        self._keepalive = KEEPALIVE
        self._slots = asyncio.Semaphore(LIMIT)
        self._idle: list[tuple[ResponseHandler, float]] = []
        self._closed = False
        lines = [f"Host: {url.host_port_subcomponent}", "Content-Type: application/json"]
        auth = BasicAuth.from_url(url)  # https://user:key@node/: Basic auth, as aiohttp sends
        if auth is not None:
            lines.append(f"Authorization: {auth.encode()}")
        for name, value in headers.items():
            if name.lower() in ("host", "content-length", "transfer-encoding", "content-type"):
                continue
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a line break")
            lines.append(f"{name}: {value}")
        self._head_fields = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._heads: dict[str, bytes] = {}

    def head(self, path: str, length: int) -> bytes:
        start = self._heads.get(path)
        if start is None:
            target = f"{self._base_path}{path}" if path else self._exact
            start = f"POST {target} HTTP/1.1\r\n".encode() + self._head_fields
            self._heads[path] = start
        return b"%bContent-Length: %d\r\n\r\n" % (start, length)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """`body` POSTed to `path` under the base URL's path (`""`: to the URL itself);
        raises `NotSent`, an `aiohttp.ClientError` or `TimeoutError`."""
        request = self.head(path, len(body)) + body
        async with asyncio.timeout(self._timeout), self._slots:  # the wait for a slot counts
            proto = await self._connection()
            try:
                proto.set_response_params()
                assert proto.transport is not None
                proto.transport.write(request)
                message, payload = await proto.read()
                raw = await self._whole(payload)
            except BaseException:
                proto.close()
                raise
            if message.should_close or not payload.is_eof() or proto.should_close:
                proto.close()
            else:
                self._release(proto)
            return message.code, raw

    async def _whole(self, payload: StreamReader) -> bytes:
        """The body to its end (`read(n)` would stop at what has arrived: an answer in
        several segments cut short), refused past the size limit."""
        if payload.is_eof():
            # All of it came with the head (a small JSON answer usually does): one read of
            # what aiohttp holds, not the readany() loop (~20 Python calls an answer).
            raw = payload.read_nowait()
            if len(raw) > self._max_answer:
                raise ClientPayloadError(f"answer over {self._max_answer} bytes")
            return raw
        blocks: list[bytes] = []
        size = 0
        while block := await payload.readany():
            size += len(block)
            if size > self._max_answer:
                raise ClientPayloadError(f"answer over {self._max_answer} bytes")
            blocks.append(block)
        return b"".join(blocks)

    async def _connection(self) -> ResponseHandler:
        now = time.monotonic()
        if self._idle and now - self._idle[0][1] >= self._keepalive:
            self._prune(now)  # the oldest, at the bottom, are never popped under steady load
        while self._idle:
            proto, since = self._idle.pop()
            # Closed by the server, or holding bytes nobody asked for: never reused.
            if proto.is_connected() and not proto.should_close and now - since < self._keepalive:
                return proto
            proto.close()
        loop = asyncio.get_running_loop()
        try:
            _, proto = await loop.create_connection(
                lambda: ResponseHandler(loop),
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        except OSError as exc:
            raise NotSent(f"cannot connect: {exc}") from exc
        sock = proto.transport.get_extra_info("socket") if proto.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return proto

    def _prune(self, now: float) -> None:
        kept = []
        for proto, since in self._idle:
            if now - since < self._keepalive and proto.is_connected():
                kept.append((proto, since))
            else:
                proto.close()
        self._idle = kept

    def _release(self, proto: ResponseHandler) -> None:
        if self._closed:
            proto.close()
        else:
            self._idle.append((proto, time.monotonic()))

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop()[0].close()
