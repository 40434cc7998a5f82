"""RemoteFacilitator against small facilitator servers on loopback that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import BaseModel
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from gateway.config.settings import RemoteFacilitatorSettings
from gateway.errors import FacilitatorUnavailable, SettlementPending
from gateway.facilitators.remote import RemoteFacilitator
from tests.procs import free_port

REQ = PaymentRequirements(
    scheme="exact",
    network="eip155:84532",
    asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    amount="1000",
    pay_to="0x" + "22" * 20,
    max_timeout_seconds=60,
)
PAYLOAD = PaymentPayload(payload={"signature": "0x00"}, accepted=REQ)
TX = "0x" + "ab" * 32
SUPPORTED = {"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:84532"}]}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Fake:
    """A facilitator whose /verify and /settle answers a test chooses."""

    def __init__(self, verify: Handler | None = None, settle: Handler | None = None) -> None:
        self.calls: list[str] = []
        self.seen: list[dict[str, object]] = []
        app = web.Application()
        app.router.add_post("/verify", self._wrap("verify", verify or ok_verify))
        app.router.add_post("/settle", self._wrap("settle", settle or ok_settle))
        app.router.add_get("/supported", lambda r: _json(SUPPORTED))
        self.server = TestServer(app, host="127.0.0.1")

    def _wrap(self, name: str, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.calls.append(name)
            self.seen.append(await request.json())
            return await handler(request)

        return wrapped

    @property
    def url(self) -> str:
        return str(self.server.make_url(""))


async def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def ok_verify(_: web.Request) -> web.Response:
    return await _json({"isValid": True, "payer": "0x" + "11" * 20})


async def ok_settle(_: web.Request) -> web.Response:
    return await _json({"success": True, "transaction": TX, "network": "eip155:84532"})


async def invalid_verify(_: web.Request) -> web.Response:
    return await _json(
        {"isValid": False, "invalidReason": "invalid_exact_evm_payload_signature"}, 400
    )


async def boom(_: web.Request) -> web.Response:
    return web.Response(status=503, text="down")


async def garbage(_: web.Request) -> web.Response:
    return web.Response(status=200, text="<html>not json</html>")


async def hang_up(request: web.Request) -> web.Response:
    """The request arrived, then the connection dies with no answer."""
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(1)
    return web.Response()


async def hang(_: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response()


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[..., Awaitable[Fake]]]:
    started: list[Fake] = []

    async def make(**kw: Handler) -> Fake:
        fake = Fake(**kw)
        await fake.server.start_server()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.server.close()


async def client(*urls: str, timeout: float = 2.0) -> RemoteFacilitator:
    c = RemoteFacilitator([RemoteFacilitatorSettings(url=u, timeout=timeout) for u in urls])
    await c.start()
    return c


DEAD = f"http://127.0.0.1:{free_port()}"


async def test_verify_and_settle_speak_the_wire_format(fakes) -> None:  # type: ignore[no-untyped-def]
    f = await fakes()
    c = await client(f.url)
    try:
        assert (await c.verify(PAYLOAD, REQ)).is_valid
        assert (await c.settle(PAYLOAD, REQ)).transaction == TX
        body = f.seen[0]
        assert body["x402Version"] == 2
        assert body["paymentRequirements"]["payTo"] == REQ.pay_to  # type: ignore[index]
    finally:
        await c.close()


async def test_invalid_answer_is_final_no_failover(fakes) -> None:  # type: ignore[no-untyped-def]
    first, second = await fakes(verify=invalid_verify), await fakes()
    c = await client(first.url, second.url)
    try:
        result = await c.verify(PAYLOAD, REQ)
        assert (
            not result.is_valid and result.invalid_reason == "invalid_exact_evm_payload_signature"
        )
        assert second.calls == []
    finally:
        await c.close()


@pytest.mark.parametrize("bad", [boom, garbage, hang_up])
async def test_verify_fails_over_on_5xx_and_nonsense(fakes, bad) -> None:  # type: ignore[no-untyped-def]
    first, second = await fakes(verify=bad), await fakes()
    c = await client(first.url, second.url)
    try:
        assert (await c.verify(PAYLOAD, REQ)).is_valid
        assert first.calls == ["verify"] and second.calls == ["verify"]
    finally:
        await c.close()


async def test_verify_fails_over_on_timeout_and_refused(fakes) -> None:  # type: ignore[no-untyped-def]
    slow, good = await fakes(verify=hang), await fakes()
    c = await client(DEAD, slow.url, good.url, timeout=0.3)
    try:
        assert (await c.verify(PAYLOAD, REQ)).is_valid
    finally:
        await c.close()


async def test_all_down_fails_closed(fakes) -> None:  # type: ignore[no-untyped-def]
    f = await fakes(verify=boom)
    c = await client(DEAD, f.url)
    try:
        with pytest.raises(FacilitatorUnavailable) as err:
            await c.verify(PAYLOAD, REQ)
        assert "cannot connect" in err.value.detail and "HTTP 503" in err.value.detail
    finally:
        await c.close()


async def test_settle_moves_on_only_when_never_reached(fakes) -> None:  # type: ignore[no-untyped-def]
    good = await fakes()
    c = await client(DEAD, good.url)
    try:
        assert (await c.settle(PAYLOAD, REQ)).success
    finally:
        await c.close()


@pytest.mark.parametrize("bad", [boom, garbage, hang, hang_up])
async def test_settle_with_unknown_outcome_is_pending_not_retried(fakes, bad) -> None:  # type: ignore[no-untyped-def]
    """Also on a connection kept alive from a verify: the settle is not sent again."""
    first, second = await fakes(settle=bad), await fakes()
    c = await client(first.url, second.url, timeout=0.3)
    try:
        assert (await c.verify(PAYLOAD, REQ)).is_valid  # leaves a kept connection to first
        with pytest.raises(SettlementPending):
            await c.settle(PAYLOAD, REQ)
        assert second.calls == [] and first.calls == ["verify", "settle"]
    finally:
        await c.close()


async def test_settle_success_without_transaction_is_not_trusted(fakes) -> None:  # type: ignore[no-untyped-def]
    async def no_tx(_: web.Request) -> web.Response:
        return await _json({"success": True, "transaction": "", "network": "eip155:84532"})

    f = await fakes(settle=no_tx)
    c = await client(f.url)
    try:
        with pytest.raises(SettlementPending):
            await c.settle(PAYLOAD, REQ)
    finally:
        await c.close()


async def test_supported_merges_and_ping(fakes) -> None:  # type: ignore[no-untyped-def]
    f = await fakes()
    c = await client(DEAD, f.url)
    try:
        errors = await c.refresh_supported()
        assert len(errors) == 1 and DEAD in errors[0]
        assert [(k.scheme, k.network) for k in c.get_supported().kinds] == [
            ("exact", "eip155:84532")
        ]
        await c.ping()
    finally:
        await c.close()


async def test_supported_is_built_once_and_rebuilt_when_an_endpoint_answers(fakes) -> None:  # type: ignore[no-untyped-def]
    first, second = await fakes(), await fakes()
    c = await client(first.url, second.url)
    try:
        assert c.get_supported().kinds == []  # nothing answered yet (and this is cached)
        assert await c._fetch_supported(c._endpoints[0]) == ""  # the first one answers
        once = c.get_supported()
        assert len(once.kinds) == 1 and c.get_supported() is once  # not rebuilt per call
        await c.refresh_supported()  # both answer: the merge has both endpoints' kinds
        assert len(c.get_supported().kinds) == 2 and c.get_supported() is not once
    finally:
        await c.close()


async def test_ping_fails_when_nothing_answers() -> None:
    c = await client(DEAD)
    try:
        with pytest.raises(FacilitatorUnavailable):
            await c.ping()
    finally:
        await c.close()


def test_request_body_is_json() -> None:
    body = json.loads(RemoteFacilitator._body(PAYLOAD, REQ))
    assert set(body) == {"x402Version", "paymentPayload", "paymentRequirements"}


def _dumped(payload: BaseModel, requirements: BaseModel, version: int) -> dict[str, object]:
    """The body as the SDK's HTTPFacilitatorClient writes it: model_dump, then json."""
    return {
        "x402Version": version,
        "paymentPayload": payload.model_dump(by_alias=True, exclude_none=True),
        "paymentRequirements": requirements.model_dump(by_alias=True, exclude_none=True),
    }


def test_request_body_is_the_models_dumped_v2_and_v1() -> None:
    """The spliced JSON (model_dump_json per model) is the same document as the dumped dicts,
    non-ASCII text, nested payloads and 78-digit integers included."""
    req = REQ.model_copy(update={"extra": {"name": "USD Coin", "version": "2", "note": "é✓"}})
    payload = PaymentPayload(
        payload={"signature": "0x00", "authorization": {"value": str(2**256 - 1), "n": [1, 2]}},
        accepted=req,
        extensions={"x": {"info": {"id": "ü"}}},
    )
    assert json.loads(RemoteFacilitator._body(payload, req)) == _dumped(payload, req, 2)
    req1 = PaymentRequirementsV1(
        scheme="exact",
        network="base-sepolia",
        max_amount_required="1000",
        resource="http://gw/paid/ü",
        description="Ünïcode — price",
        mime_type="application/json",
        pay_to="0x" + "22" * 20,
        max_timeout_seconds=60,
        asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    )
    payload1 = PaymentPayloadV1(
        scheme="exact", network="base-sepolia", payload={"signature": "0x00"}
    )
    assert json.loads(RemoteFacilitator._body(payload1, req1)) == _dumped(payload1, req1, 1)


async def test_settle_reuses_the_verify_body_only_for_the_same_objects(fakes) -> None:  # type: ignore[no-untyped-def]
    """The settle of a verified payment sends the verify's body; other requirements (an
    `upto` settled for less, another route's) get their own, never the kept one."""
    f = await fakes()
    c = await client(f.url)
    try:
        await c.verify(PAYLOAD, REQ)
        await c.settle(PAYLOAD, REQ)
        assert f.seen[0] == f.seen[1] == _dumped(PAYLOAD, REQ, 2)
        other = REQ.model_copy(update={"amount": "7"})
        await c.verify(PAYLOAD, REQ)
        await c.settle(PAYLOAD, other)
        assert f.seen[3]["paymentRequirements"]["amount"] == "7"  # type: ignore[index]
        await c.settle(PAYLOAD, REQ)  # the kept body was for (PAYLOAD, REQ), still unused
        assert f.seen[4] == _dumped(PAYLOAD, REQ, 2)
        req_copy = REQ.model_copy()
        await c.verify(PAYLOAD, req_copy)
        await c.settle(PAYLOAD, req_copy)
        assert f.seen[6] == _dumped(PAYLOAD, req_copy, 2)
        assert not c._bodies  # taken once: nothing kept after the settles
    finally:
        await c.close()


async def test_no_body_is_kept_for_a_verify_that_fails(fakes) -> None:  # type: ignore[no-untyped-def]
    f = await fakes(verify=invalid_verify)
    c = await client(f.url, DEAD)
    try:
        assert not (await c.verify(PAYLOAD, REQ)).is_valid
        assert not c._bodies
    finally:
        await c.close()
    c = await client(DEAD)
    try:
        with pytest.raises(FacilitatorUnavailable):
            await c.verify(PAYLOAD, REQ)
        assert not c._bodies
    finally:
        await c.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_failed_endpoint_is_skipped_for_the_cooldown_then_retried(fakes) -> None:  # type: ignore[no-untyped-def]
    state = {"down": True}

    async def flaky(request: web.Request) -> web.Response:
        return await (boom(request) if state["down"] else ok_verify(request))

    first, second = await fakes(verify=flaky), await fakes()
    clock = Clock()
    c = RemoteFacilitator(
        [RemoteFacilitatorSettings(url=f.url, timeout=2.0) for f in (first, second)],
        cooldown=10.0,
        clock=clock,
    )
    await c.start()
    try:
        assert (await c.verify(PAYLOAD, REQ)).is_valid  # first fails over to second
        assert (await c.verify(PAYLOAD, REQ)).is_valid  # first asleep: not even asked
        assert first.calls == ["verify"] and second.calls == ["verify", "verify"]
        state["down"] = False
        clock.now += 10.5
        assert (await c.verify(PAYLOAD, REQ)).is_valid  # awake again, and first in line
        assert first.calls == ["verify", "verify"] and len(second.calls) == 2
    finally:
        await c.close()


async def test_ping_probes_a_failed_endpoint_once_its_cooldown_is_over() -> None:
    down = {"now": False}

    async def answer(request: web.Request) -> web.Response:
        if down["now"]:
            return await boom(request)
        return await (_json(SUPPORTED) if request.method == "GET" else ok_verify(request))

    app = web.Application()
    app.router.add_route("*", "/{op}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    clock = Clock()
    url = str(server.make_url(""))
    c = RemoteFacilitator(
        [RemoteFacilitatorSettings(url=url, timeout=2.0)], cooldown=5.0, clock=clock
    )
    await c.start()
    try:
        await c.ping()  # answered /supported: usable
        down["now"] = True
        with pytest.raises(FacilitatorUnavailable):
            await c.verify(PAYLOAD, REQ)
        with pytest.raises(FacilitatorUnavailable, match="failed recently"):
            await c.ping()  # asleep: not asked
        clock.now += 6
        with pytest.raises(FacilitatorUnavailable, match="HTTP 503"):
            await c.ping()  # cool-down over, asked, still failing: not ready merely by time
        with pytest.raises(FacilitatorUnavailable, match="failed recently"):
            await c.ping()  # and back to sleep
        down["now"] = False
        clock.now += 6
        await c.ping()  # answers again: usable
        assert (await c.verify(PAYLOAD, REQ)).is_valid
    finally:
        await c.close()
        await server.close()
