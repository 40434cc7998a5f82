"""The JSON-RPC client against a small aiohttp node on the test's own loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.demo.chain import free_port
from gateway.facilitators.engine.rpc import (
    Call,
    RpcClient,
    RpcError,
    RpcUnavailable,
    hex_data,
    quantity,
)

Answer = Callable[[Any], Any]


@contextlib.asynccontextmanager
async def node(answer: Answer, status: int = 200) -> AsyncIterator[tuple[str, list[Any]]]:
    seen: list[Any] = []

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.Response(
            status=status, text=json.dumps(answer(body)), content_type="application/json"
        )

    app = web.Application()
    app.router.add_post("/", rpc)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/")), seen


def echo(body: Any) -> Any:
    def one(req: dict[str, Any]) -> dict[str, Any]:
        if req["method"] == "fail":
            return {
                "jsonrpc": "2.0",
                "id": req["id"],
                "error": {"code": 3, "message": "execution reverted", "data": "0x08c3"},
            }
        return {"jsonrpc": "2.0", "id": req["id"], "result": [req["method"], *req["params"]]}

    if isinstance(body, list):
        return [one(r) for r in reversed(body)]  # any order: matched by id
    return one(body)


async def test_call_and_batch_in_one_request() -> None:
    async with node(echo) as (url, seen):
        client = RpcClient(url)
        await client.start()
        try:
            assert await client.call("eth_x", 1, "a") == ["eth_x", 1, "a"]
            got = await client.batch([Call("a", (1,)), Call("fail"), Call("b")])
            assert got[0] == ["a", 1] and got[2] == ["b"]
            assert isinstance(got[1], RpcError) and got[1].is_revert
            assert got[1].revert_data == bytes.fromhex("08c3")
            assert len(seen) == 2 and len(seen[1]) == 3  # one HTTP request for the batch
            with pytest.raises(RpcError, match="execution reverted"):
                await client.call("fail")
            assert await client.batch([]) == []
        finally:
            await client.close()


async def test_large_batches_are_split() -> None:
    async with node(echo) as (url, seen):
        client = RpcClient(url, batch_limit=2)
        await client.start()
        try:
            got = await client.batch([Call("m", (i,)) for i in range(5)])
            assert got == [["m", i] for i in range(5)]
            assert sorted(len(b) for b in seen) == [1, 2, 2]
        finally:
            await client.close()


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (
            lambda body: {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "batch too large"},
            },
            200,
        ),
        (echo, 503),
    ],
)
async def test_refused_or_failed_requests_are_unavailable(answer: Answer, status: int) -> None:
    async with node(answer, status) as (url, _):
        client = RpcClient(url)
        await client.start()
        try:
            with pytest.raises(RpcUnavailable) as caught:
                await client.batch([Call("a")])
            assert caught.value.maybe_sent  # it reached the node: a broadcast may be in
        finally:
            await client.close()


async def test_missing_items_and_odd_errors_are_per_call_errors() -> None:
    def partial(body: Any) -> Any:
        return [{"jsonrpc": "2.0", "id": body[0]["id"], "error": "weird"}]

    async with node(partial) as (url, _):
        client = RpcClient(url)
        await client.start()
        try:
            first, second = await client.batch([Call("a"), Call("b")])
            assert isinstance(first, RpcError) and "weird" in first.message
            assert isinstance(second, RpcError) and "no answer" in second.message
        finally:
            await client.close()


async def test_a_refused_connection_was_never_sent() -> None:
    client = RpcClient(f"http://127.0.0.1:{free_port()}")
    await client.start()
    try:
        with pytest.raises(RpcUnavailable) as caught:
            await client.call("eth_sendRawTransaction", "0x00")
        assert not caught.value.maybe_sent
    finally:
        await client.close()


async def test_a_timeout_may_have_been_sent() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/", slow)
    async with TestServer(app, host="127.0.0.1") as server:
        client = RpcClient(str(server.make_url("/")), timeout=0.2)
        await client.start()
        try:
            with pytest.raises(RpcUnavailable) as caught:
                await client.call("eth_sendRawTransaction", "0x00")
            assert caught.value.maybe_sent
        finally:
            await client.close()


async def test_not_json_is_unavailable_and_use_before_start_is_a_bug() -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>")

    app = web.Application()
    app.router.add_post("/", garbage)
    async with TestServer(app, host="127.0.0.1") as server:
        client = RpcClient(str(server.make_url("/")))
        with pytest.raises(RuntimeError, match="start"):
            await client.call("x")
        await client.start()
        try:
            with pytest.raises(RpcUnavailable, match="not JSON"):
                await client.call("x")
        finally:
            await client.close()


def test_quantities() -> None:
    assert quantity("0x1a") == 26
    for bad in ("26", 26, None, "0xzz"):
        with pytest.raises(ValueError):
            quantity(bad)
    assert hex_data(b"\x01\xff") == "0x01ff"
    assert RpcError("m", -32000, "x", {"data": "0x01"}).revert_data == b"\x01"
    assert RpcError("m", -32000, "x", "0xzz").revert_data == b""
