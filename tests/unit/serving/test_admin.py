"""gateway.serving.admin: /healthz, /readyz (concurrent, bounded, cached checks), /metrics hook."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.serving.admin import FunctionCheck, Readiness, make_admin_app
from gateway.serving.state import attach_state

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


class Probe:
    """A check whose outcome the test sets, counting its calls."""

    def __init__(self, name: str, error: Exception | None = None, delay: float = 0.0) -> None:
        self.name = name
        self.error = error
        self.delay = delay
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error


async def test_healthz_is_ok_while_serving_and_503_once_draining(
    aiohttp_client: ClientFactory,
) -> None:
    main = web.Application()
    state = attach_state(main)
    client = await aiohttp_client(make_admin_app(main, []))

    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    assert resp.headers["Cache-Control"] == "no-store"

    state.draining = True
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert await resp.json() == {"status": "draining"}


async def test_readyz_passes_when_every_check_passes(aiohttp_client: ClientFactory) -> None:
    checks = [Probe("store"), Probe("facilitator")]
    client = await aiohttp_client(make_admin_app(web.Application(), checks))
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"ready": True, "checks": {"store": "ok", "facilitator": "ok"}}


async def test_readyz_names_each_failing_check_and_why(aiohttp_client: ClientFactory) -> None:
    checks = [
        Probe("store"),
        Probe("facilitator", ConnectionRefusedError("connection refused by 127.0.0.1:4020")),
        Probe("chain", RuntimeError()),
    ]
    client = await aiohttp_client(make_admin_app(web.Application(), checks))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {
        "ready": False,
        "checks": {
            "store": "ok",
            "facilitator": "ConnectionRefusedError: connection refused by 127.0.0.1:4020",
            "chain": "RuntimeError",
        },
    }


async def test_readyz_is_not_ready_while_draining(aiohttp_client: ClientFactory) -> None:
    main = web.Application()
    attach_state(main).draining = True
    client = await aiohttp_client(make_admin_app(main, [Probe("store")]))
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["ready"] is False and body["draining"] is True


async def test_checks_run_concurrently_each_bounded_by_the_timeout() -> None:
    slow = [Probe("a", delay=5), Probe("b", delay=5), Probe("fast")]
    readiness = Readiness(slow, timeout=0.2)
    started = time.monotonic()
    results = await readiness.results()
    assert time.monotonic() - started < 1.0  # not 0.2 s per check in turn, and not 5 s
    assert results == {"a": "timed out after 0.2s", "b": "timed out after 0.2s", "fast": "ok"}


async def test_results_are_cached_and_probes_share_one_run() -> None:
    now = [100.0]
    probe = Probe("store", delay=0.05)
    readiness = Readiness([probe], ttl=1.0, clock=lambda: now[0])

    first = await asyncio.gather(*(readiness.results() for _ in range(10)))
    assert probe.calls == 1
    assert all(r == {"store": "ok"} for r in first)

    now[0] += 0.5
    probe.error = OSError("down")
    assert await readiness.results() == {"store": "ok"}  # still cached
    assert probe.calls == 1

    now[0] += 0.6
    assert await readiness.results() == {"store": "OSError: down"}
    assert probe.calls == 2


async def test_a_prober_hanging_up_does_not_cancel_the_shared_run() -> None:
    probe = Probe("store", delay=0.1)
    readiness = Readiness([probe])
    impatient = asyncio.create_task(readiness.results())
    patient = asyncio.create_task(readiness.results())
    await asyncio.sleep(0.01)
    impatient.cancel()
    assert await patient == {"store": "ok"}
    assert probe.calls == 1


async def test_long_failure_reasons_are_truncated() -> None:
    readiness = Readiness([Probe("x", ValueError("y" * 5000))])
    assert len((await readiness.results())["x"]) <= 300


def test_check_names_must_be_unique() -> None:
    try:
        Readiness([Probe("store"), Probe("store")])
    except ValueError as exc:
        assert "unique" in str(exc)
    else:
        raise AssertionError("duplicate names accepted")


async def test_function_check_wraps_a_coroutine_function(aiohttp_client: ClientFactory) -> None:
    async def down() -> None:
        raise ConnectionError("redis: connection refused")

    check = FunctionCheck("store", down)
    client = await aiohttp_client(make_admin_app(web.Application(), [check]))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"] == {"store": "ConnectionError: redis: connection refused"}


async def test_metrics_route_only_when_a_handler_is_given(aiohttp_client: ClientFactory) -> None:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text="requests_total 3\n")

    without = await aiohttp_client(make_admin_app(web.Application(), []))
    assert (await without.get("/metrics")).status == 404
    with_metrics = await aiohttp_client(
        make_admin_app(web.Application(), [], metrics_handler=metrics)
    )
    resp = await with_metrics.get("/metrics")
    assert resp.status == 200
    assert await resp.text() == "requests_total 3\n"
