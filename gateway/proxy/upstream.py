"""The streaming reverse-proxy core: one pooled client session, bodies streamed both ways.

`Upstream.send()` forwards a client request (body streamed from the client's socket, never
read whole) and returns as soon as the origin's response head has arrived, so the caller can
settle a payment before anything reaches the client; `relay()` then streams the response
body to the client with bounded memory (TCP back-pressure, not buffers), or
`Upstream.discard()` drops it. Header hygiene lives in `gateway.proxy.headers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict
from yarl import URL

from gateway.config.settings import Settings
from gateway.errors import PayloadTooLarge, UpstreamTimeout
from gateway.observe.logs import get_logger
from gateway.proxy import headers as hh
from gateway.proxy.body import RequestBody
from gateway.proxy.failures import upstream_failure

log = get_logger("gateway.proxy")

# Node's default keep-alive timeout is 5 s: retiring idle origin connections before that keeps
# a POST from landing on a socket the origin is closing (aiohttp retries only idempotent ones).
KEEPALIVE_TIMEOUT = 4.0
# Origins send big Set-Cookie / CSP headers; aiohttp's 8 KiB default would turn them into 502s.
MAX_FIELD_SIZE = 64 * 1024
# The origin must see the client's headers, not aiohttp's defaults added where the client sent none.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
NO_BODY_STATUS = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class _Origin:
    """A base URL taken apart once, so each request only glues strings."""

    scheme: str
    authority: str
    prefix: str  # the base URL's path without its trailing slash; "" for none

    @classmethod
    def parse(cls, base: str) -> _Origin:
        url = URL(base)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) origin URL: {base!r}")
        return cls(url.scheme, url.raw_authority, url.raw_path.rstrip("/"))

    def url(self, path: str, query: str) -> URL:
        # encoded=True: the origin receives exactly the canonical path that was priced.
        return URL.build(
            scheme=self.scheme,
            authority=self.authority,
            path=self.prefix + path,
            query_string=query,
            encoded=True,
        )


class Upstream:
    """The app's one pooled connection to its origins. `start()` before use, `close()` after."""

    def __init__(self, settings: Settings) -> None:
        self._timeouts = settings.timeouts
        self._limit = settings.limits.request_body
        self._pool_size = settings.limits.connections
        self._trusted = settings.trusted_proxies
        self._session: aiohttp.ClientSession | None = None
        bases = (settings.upstream, *(r.upstream for r in settings.routes if r.upstream))
        self._origins = {base: _Origin.parse(base) for base in bases}
        self._drops: dict[tuple[str, ...], frozenset[str]] = {}

    async def start(self) -> None:
        timeouts = self._timeouts
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, limit_per_host=0, keepalive_timeout=KEEPALIVE_TIMEOUT
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=timeouts.connect,
                sock_connect=timeouts.connect,
                sock_read=timeouts.read,
            ),
            raise_for_status=False,
            trust_env=False,
            requote_redirect_url=False,
            max_field_size=MAX_FIELD_SIZE,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _origin(self, base: str) -> _Origin:
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = _Origin.parse(base)
        return origin

    def _drop_set(self, names: Iterable[str]) -> frozenset[str]:
        if not isinstance(names, tuple):
            return hh.lower_names(names)
        drop = self._drops.get(names)
        if drop is None:
            drop = self._drops[names] = hh.lower_names(names)
        return drop

    async def send(  # noqa: PLR0913  the request and where it goes, keyword-only at call sites
        self,
        request: web.BaseRequest,
        *,
        base_url: str,
        path: str,
        query: str = "",
        add_headers: Mapping[str, str] | None = None,
        drop_headers: Iterable[str] = (),
        body: bytes | None = None,
    ) -> aiohttp.ClientResponse:
        """Forward `request` to `base_url` + `path` (+ `?query`, raw) and await the response head.

        `path` and `query` go out byte for byte as given (already encoded); a path in
        `base_url` (`http://svc:9000/api`) is put in front of `path`. The response body
        is left unread: pass it to `relay()` or `discard()`, exactly once.
        Raises PayloadTooLarge, RequestTimeout, BadRequest (the client's body), UpstreamError,
        UpstreamTimeout (the origin's failure).
        """
        session = self._started()
        origin = self._origin(base_url)
        url = origin.url(path, query)
        peer = request.remote
        headers = hh.request_headers(
            request.headers,
            peer=peer,
            scheme=request.scheme,
            trusted=hh.is_trusted(peer, self._trusted),
            drop=self._drop_set(drop_headers),
            add=add_headers,
        )
        if body is not None:  # read (and maybe rewritten) by the gateway: sent as given
            headers.popall("Content-Length", None)
            headers.popall("Transfer-Encoding", None)
            return await self._given_body(session, request.method, url, headers, origin, body=body)
        if not request.body_exists:
            return await self._without_body(session, request.method, url, headers, origin)
        return await self._with_body(session, request, url, headers, origin)

    def _started(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.send() called before start()")
        return self._session

    async def _without_body(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        origin: _Origin,
    ) -> aiohttp.ClientResponse:
        # No data: aiohttp sends no body at all (a GET must not get a chunked empty one).
        try:
            return await session.request(method, url, headers=headers, allow_redirects=False)
        except aiohttp.ClientError as exc:
            raise upstream_failure(exc, origin.authority, self._timeouts) from None

    async def _given_body(  # noqa: PLR0913  one request's parts
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        origin: _Origin,
        *,
        body: bytes,
    ) -> aiohttp.ClientResponse:
        try:
            return await session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except aiohttp.ClientError as exc:
            raise upstream_failure(exc, origin.authority, self._timeouts) from None

    async def _with_body(
        self,
        session: aiohttp.ClientSession,
        request: web.BaseRequest,
        url: URL,
        headers: CIMultiDict[str],
        origin: _Origin,
    ) -> aiohttp.ClientResponse:
        """Stream the client's body to the origin, within the size limit and idle timeouts."""
        body = self._body(request)
        watchdog = asyncio.timeout(None)
        try:
            async with watchdog:
                body.watchdog = watchdog
                try:
                    return await session.request(
                        request.method,
                        url,
                        headers=headers,
                        data=body.chunks(),
                        allow_redirects=False,
                    )
                finally:
                    body.watchdog = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            if body.error is not None:
                raise body.error from None
            if watchdog.expired():
                raise UpstreamTimeout(
                    f"{origin.authority} stopped reading the request body for "
                    f"{self._timeouts.read:g}s"
                ) from None
            if isinstance(exc, aiohttp.ClientError):
                raise upstream_failure(exc, origin.authority, self._timeouts) from None
            raise

    def _body(self, request: web.BaseRequest) -> RequestBody:
        length = request.content_length
        if self._limit is not None and length is not None and length > self._limit:
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds the limit of {self._limit} bytes"
            )
        return RequestBody(
            request.content, self._limit, self._timeouts.request_body, self._timeouts.read
        )

    async def discard(self, resp: aiohttp.ClientResponse) -> None:
        """Drop a response without relaying it; its connection is reused only if complete."""
        resp.release()


def _abort_client(request: web.BaseRequest, framed: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    # With framing (Content-Length or chunked) a closed connection is visibly short; a
    # close-delimited body (HTTP/1.0) would look complete after a FIN, so that one gets a RST
    # (SO_LINGER 0: close() then resets instead of finishing the stream).
    if not framed:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


async def relay(
    request: web.BaseRequest,
    resp: aiohttp.ClientResponse,
    extra_headers: Mapping[str, str] | None = None,
    *,
    expose_x402: bool = False,
    paid: bool = False,
) -> web.StreamResponse:
    """Send the origin's response to the client: status, headers, then the body as it comes.

    `extra_headers` replace origin headers of the same name; `expose_x402` lists the x402
    headers in Access-Control-Expose-Headers; `paid` (an answer on a priced route) does that,
    strips CDN cache directives, and adds `Vary: Origin` to an origin-specific CORS answer.
    The returned response is complete, or the client's connection is closed (client gone, or
    the origin failed mid-body: a truncated body must not look complete). The upstream
    response is released on every path.
    """
    out, _ = await relay_watched(request, resp, extra_headers, expose_x402=expose_x402, paid=paid)
    return out


# How a relayed body ended: all of it sent, the origin failed mid-body, the client went away.
Ending = Literal["complete", "origin_failed", "client_gone"]


async def relay_watched(  # noqa: PLR0913  relay()'s inputs plus the watching options
    request: web.BaseRequest,
    resp: aiohttp.ClientResponse,
    extra_headers: Mapping[str, str] | None = None,
    *,
    expose_x402: bool = False,
    paid: bool = False,
    tap: Callable[[bytes], None] | None = None,
    open_ended: bool = False,
) -> tuple[web.StreamResponse, Ending]:
    """`relay()`, saying how the body ended; `tap` sees each chunk as it passes (never
    kept). `open_ended`: the caller still has work after the origin's body (a settlement, a
    final SSE event), so the origin's Content-Length is dropped (the body goes out chunked),
    and a client leaving mid-body (aiohttp cancels the handler) ends the relay as
    `client_gone` instead of cancelling the caller's remaining work."""
    ending: Ending = "client_gone"
    try:
        headers = _client_headers(resp, extra_headers, expose_x402=expose_x402, paid=paid)
        if open_ended:
            headers.popall("Content-Length", None)
        body = _arrived_whole(request, resp) if tap is None and not open_ended else None
        if body is not None:
            out, ending = await _send_whole(request, resp, headers, body)
            return out, ending
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        try:
            await out.prepare(request)
            if request.method == "HEAD" or resp.status in NO_BODY_STATUS:
                ending = "complete"
                return out, ending
            whole = await _stream_body(request, resp, out, tap)
            ending = "complete" if whole else "origin_failed"
        except ConnectionResetError:
            pass  # the client went away: nothing to answer, nobody to tell
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not open_ended or task is None:
                raise
            task.uncancel()  # the client went away; the caller finishes what it owes
        return out, ending
    finally:
        if ending == "complete":
            resp.release()
        else:
            resp.close()


def _client_headers(
    resp: aiohttp.ClientResponse,
    extra_headers: Mapping[str, str] | None,
    *,
    expose_x402: bool,
    paid: bool,
) -> CIMultiDict[str]:
    headers = hh.response_headers(resp.headers)
    for name, value in (extra_headers or {}).items():
        headers[name] = value
    if paid:
        hh.strip_cdn_directives(headers)
        if headers.get("Access-Control-Allow-Origin", "*") != "*":
            hh.add_vary(headers, "Origin")
    if expose_x402 or paid:
        hh.expose_x402_headers(headers)
    return headers


async def _send_whole(
    request: web.BaseRequest, resp: aiohttp.ClientResponse, headers: CIMultiDict[str], body: bytes
) -> tuple[web.StreamResponse, Ending]:
    """A body that is already in memory goes out with the head, in one write (a
    StreamResponse sends its head on prepare(), then each chunk: a syscall each)."""
    out = web.Response(status=resp.status, reason=resp.reason, headers=headers, body=body)
    try:
        await out.prepare(request)
        await out.write_eof()
    except ConnectionResetError:
        return out, "client_gone"  # nothing to answer, nobody to tell
    return out, "complete"


def _arrived_whole(request: web.BaseRequest, resp: aiohttp.ClientResponse) -> bytes | None:
    """The origin's whole body when it has already arrived with the head (a small answer
    usually does) and is framed by its Content-Length; None otherwise (streamed as it comes).
    Nothing is read or waited for here: only what aiohttp already holds."""
    if request.method == "HEAD" or resp.status in NO_BODY_STATUS:
        return None
    length, content = resp.content_length, resp.content
    # All of it received (total_bytes: fed so far, none read yet) and its end seen.
    if length is None or not content.is_eof() or content.total_bytes != length:
        return None
    return content.read_nowait()


async def _stream_body(
    request: web.BaseRequest,
    resp: aiohttp.ClientResponse,
    out: web.StreamResponse,
    tap: Callable[[bytes], None] | None = None,
) -> bool:
    """The origin's body to the client as it comes; True once it is all sent, False when the
    origin failed mid-body (the client's connection is then cut, never left looking whole)."""
    content = resp.content
    while True:
        try:
            chunk = await content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            framed = out.content_length is not None or request.version >= HttpVersion11
            _abort_client(request, framed)
            # The client got a truncated body, never a complete-looking one.
            log.warning(
                "origin_failed_mid_body",
                origin=resp.url.raw_authority,
                path=resp.url.raw_path,
                status=resp.status,
                error=repr(exc),
            )
            return False
        if not chunk:
            return True
        if tap is not None:
            tap(chunk)
        await out.write(chunk)
