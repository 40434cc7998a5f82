"""A client's request body, streamed to the origin with the gateway's limits applied."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, RequestTimeout


class RequestBody:
    """The client's request body as an async iterator, with the size limit and idle timeout.

    aiohttp wraps whatever the iterator raises into a connection error, so the original
    (413, 408, 400) is kept in `error` for `send()` to raise instead. While a chunk waits for
    the origin to take it, `watchdog` (the `send()` call's timeout) runs, so an origin that
    stops reading the upload cannot hold the request forever.
    """

    __slots__ = ("_content", "_idle", "_limit", "_stall", "error", "watchdog")

    def __init__(self, content: StreamReader, limit: int | None, idle: float, stall: float):
        self._content = content
        self._limit = limit
        self._idle = idle
        self._stall = stall
        self.error: GatewayError | None = None
        self.watchdog: asyncio.Timeout | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        content, limit, idle = self._content, self._limit, self._idle
        total = 0
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
            except TimeoutError:
                self.error = RequestTimeout(f"the client sent no request body for {idle:g}s")
                raise self.error from None
            # RuntimeError: aiohttp's reader saying "Connection closed." (client gone).
            except (OSError, HttpProcessingError, RuntimeError) as exc:
                self.error = BadRequest(f"request body incomplete: {exc}", reason="incomplete_body")
                raise self.error from None
            if not chunk:
                return
            total += len(chunk)
            if limit is not None and total > limit:
                self.error = PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                raise self.error
            if (watchdog := self.watchdog) is not None:
                watchdog.reschedule(loop.time() + self._stall)
            yield chunk
            if (watchdog := self.watchdog) is not None:
                watchdog.reschedule(None)
