"""RequestBody: the client's body as chunks, with the size limit, idle timeout and watchdog."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

from gateway.errors import BadRequest, PayloadTooLarge, RequestTimeout
from gateway.proxy.body import RequestBody


def reader(*chunks: bytes, eof: bool = True, protocol: BaseProtocol | None = None) -> StreamReader:
    loop = asyncio.get_running_loop()
    if protocol is None:
        protocol = BaseProtocol(loop)
        protocol.transport = asyncio.Transport()  # a connected peer that sends nothing more
    stream = StreamReader(protocol, 2**16, loop=loop)
    for chunk in chunks:
        stream.feed_data(chunk)
    if eof:
        stream.feed_eof()
    return stream


async def collect(body: RequestBody) -> list[bytes]:
    return [chunk async for chunk in body.chunks()]


async def test_chunks_pass_through_in_order() -> None:
    body = RequestBody(reader(b"ab", b"cd"), limit=None, idle=5, stall=5)
    assert b"".join(await collect(body)) == b"abcd"
    assert body.error is None


async def test_limit_counts_every_byte() -> None:
    body = RequestBody(reader(b"x" * 10), limit=10, idle=5, stall=5)
    assert await collect(body) == [b"x" * 10]
    body = RequestBody(reader(b"x" * 6, b"y" * 5), limit=10, idle=5, stall=5)
    with pytest.raises(PayloadTooLarge):
        await collect(body)
    assert isinstance(body.error, PayloadTooLarge)


async def test_idle_client_times_out() -> None:
    body = RequestBody(reader(b"first", eof=False), limit=None, idle=0.05, stall=5)
    with pytest.raises(RequestTimeout):
        await collect(body)
    assert isinstance(body.error, RequestTimeout)


async def test_broken_client_stream_is_bad_request() -> None:
    stream = reader(b"part", eof=False)
    stream.set_exception(ConnectionResetError("Connection lost"))
    body = RequestBody(stream, limit=None, idle=5, stall=5)
    with pytest.raises(BadRequest) as caught:
        await collect(body)
    assert caught.value.reason == "incomplete_body"
    assert body.error is caught.value


async def test_closed_connection_is_bad_request() -> None:
    protocol = BaseProtocol(asyncio.get_running_loop())  # no transport: connection lost
    stream = reader(eof=False, protocol=protocol)
    body = RequestBody(stream, limit=None, idle=5, stall=5)
    with pytest.raises(BadRequest):
        await collect(body)


async def test_watchdog_runs_only_while_a_chunk_waits_for_the_origin() -> None:
    body = RequestBody(reader(b"a", b"b"), limit=None, idle=5, stall=30)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as watchdog:
        body.watchdog = watchdog
        chunks = body.chunks()
        await anext(chunks)
        # Suspended at `yield`: the origin has not taken the chunk yet.
        deadline = watchdog.when()
        assert deadline is not None and deadline > loop.time() + 29
        with pytest.raises(StopAsyncIteration):
            await anext(chunks)
        assert watchdog.when() is None
