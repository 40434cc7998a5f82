"""The admin listener's app: `/healthz`, `/readyz` and (when given) `/metrics`.

- `/healthz` is liveness plus drain: 200 while serving, 503 from the first SIGTERM on, so a
  load balancer stops sending new requests while in-flight ones finish.
- `/readyz` runs every readiness check concurrently, each bounded by a timeout, and answers
  200 only when all pass; otherwise 503 naming each failing check and why. Results are
  cached briefly (and concurrent probes share one run), so an aggressive prober cannot turn
  into load on the store or the facilitator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiohttp import web

from gateway.serving.state import ServerState, attach_state

CHECK_TIMEOUT = 2.0
CACHE_TTL = 1.0
_REASON_MAX = 300  # characters of an exception message shown per failing check

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReadinessCheck(Protocol):
    """A dependency the gateway cannot serve paid requests without; raises when not ready."""

    name: str

    async def __call__(self) -> None: ...


class FunctionCheck:
    """A ReadinessCheck from a name and a coroutine function."""

    __slots__ = ("_probe", "name")

    def __init__(self, name: str, probe: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._probe = probe

    async def __call__(self) -> None:
        await self._probe()


Results = dict[str, str]  # check name -> "ok" or why not


class Readiness:
    """Runs the checks; one run at a time, its result reused for `ttl` seconds."""

    def __init__(
        self,
        checks: Sequence[ReadinessCheck],
        *,
        timeout: float = CHECK_TIMEOUT,
        ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [check.name for check in checks]
        if len(set(names)) != len(names):
            raise ValueError(f"readiness check names must be unique: {names}")
        self._checks = tuple(checks)
        self._timeout = timeout
        self._ttl = ttl
        self._clock = clock
        self._cached: tuple[float, Results] | None = None
        self._running: asyncio.Future[Results] | None = None

    async def results(self) -> Results:
        cached = self._cached
        if cached is not None and self._clock() - cached[0] < self._ttl:
            return cached[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._run_all())
            self._running.add_done_callback(self._store)
        # Shielded: one prober hanging up must not cancel the run the others wait on.
        return await asyncio.shield(self._running)

    def _store(self, future: asyncio.Future[Results]) -> None:
        self._running = None
        if not future.cancelled() and future.exception() is None:
            self._cached = (self._clock(), future.result())

    async def _run_all(self) -> Results:
        outcomes = await asyncio.gather(*(self._run_one(check) for check in self._checks))
        return dict(zip((check.name for check in self._checks), outcomes, strict=True))

    async def _run_one(self, check: ReadinessCheck) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                await check()
        except TimeoutError:
            return f"timed out after {self._timeout:g}s"
        # A readiness probe reports any failure of a dependency as "not ready"; the
        # exception is shown, never swallowed silently.
        except Exception as exc:  # noqa: BLE001
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return text[:_REASON_MAX]
        return "ok"


def make_admin_app(
    main_app: web.Application,
    checks: Sequence[ReadinessCheck],
    *,
    metrics_handler: Handler | None = None,
    check_timeout: float = CHECK_TIMEOUT,
    cache_ttl: float = CACHE_TTL,
) -> web.Application:
    """The admin app for `main_app` (whose ServerState says whether it is draining)."""
    state = attach_state(main_app)
    readiness = Readiness(checks, timeout=check_timeout, ttl=cache_ttl)
    app = web.Application()
    app.router.add_get("/healthz", _healthz(state))
    app.router.add_get("/readyz", _readyz(state, readiness))
    if metrics_handler is not None:
        app.router.add_get("/metrics", metrics_handler)
    return app


_NO_STORE = {"Cache-Control": "no-store"}


def _healthz(state: ServerState) -> Handler:
    async def healthz(_request: web.Request) -> web.StreamResponse:
        if state.draining:
            return web.json_response({"status": "draining"}, status=503, headers=_NO_STORE)
        return web.json_response({"status": "ok"}, headers=_NO_STORE)

    return healthz


def _readyz(state: ServerState, readiness: Readiness) -> Handler:
    async def readyz(_request: web.Request) -> web.StreamResponse:
        results = await readiness.results()
        ready = not state.draining and all(value == "ok" for value in results.values())
        body: dict[str, object] = {"ready": ready, "checks": results}
        if state.draining:
            body["draining"] = True
        return web.json_response(body, status=200 if ready else 503, headers=_NO_STORE)

    return readyz
