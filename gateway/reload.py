"""The live gateway and its hot reload (SIGHUP, `serve --watch`).

A `Gateway` is one generation of everything requests share: the settings, the compiled
route table and challenges, the upstream pool, the payments (facilitator and store). A
request takes the current generation once, when it starts, and keeps it to its end, so a
reload never changes the table under a request in flight.

A reload reads the file off the event loop, validates it (an invalid file changes nothing:
its errors are logged, `x402_gateway_config_reload_failures_total` counts it), builds the
new generation (reusing the store, the facilitator client and the upstream pool when their
settings did not change; starting new ones before the swap when they did) and swaps it in.
A replaced part is closed only once no request of any generation still using it is in
flight. Settings bound to the listening sockets or the process (`RESTART_ONLY`) keep their
running values, with a warning: they take a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import load
from gateway.config.pricing import format_price
from gateway.config.settings import LocalFacilitatorSettings, Settings
from gateway.errors import ConfigError
from gateway.facilitators import open_facilitator
from gateway.observe.logs import get_logger
from gateway.observe.metrics import Metrics
from gateway.payment.challenge import Challenges
from gateway.payment.engine import Payments
from gateway.proxy.routes import RouteTable
from gateway.proxy.upstream import Upstream
from gateway.serving.runner import InFlight
from gateway.store import open_store

log = get_logger("gateway.reload")

PAYMENT_HEADERS = ("PAYMENT-SIGNATURE", "X-PAYMENT")
WATCH_INTERVAL = 1.0

# Settings the running process cannot change: its sockets, workers, logger and parser limits.
RESTART_ONLY = (
    "listen",
    "admin",
    "workers",
    "log_level",
    "timeouts.request_header",
    "timeouts.keepalive",
    "timeouts.shutdown_grace",
    "limits.header_size",
    "limits.connections",
    "limits.payment_header",
)


# --- pure decisions ----------------------------------------------------------------------


def _get(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def _set(obj: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value)})


def pin_restart_only(running: Settings, loaded: Settings) -> tuple[Settings, list[str]]:
    """`loaded` with every RESTART_ONLY setting kept at its running value; and the names of
    those the file changed (each needs a restart to take effect)."""
    changed = [name for name in RESTART_ONLY if _get(running, name) != _get(loaded, name)]
    effective = loaded
    for name in changed:
        effective = _set(effective, name, _get(running, name))
    return effective, changed


def facilitator_key(settings: Settings) -> tuple[object, ...]:
    """What the facilitator client is built from (a local one also from the routes' networks)."""
    if any(isinstance(f, LocalFacilitatorSettings) for f in settings.facilitators):
        networks = sorted({req.network for r in settings.routes for req in r.accepts})
        return (settings.facilitators, tuple(networks), settings.network)
    return (settings.facilitators,)


def upstream_key(settings: Settings) -> tuple[object, ...]:
    return (settings.timeouts, settings.limits, settings.trusted_proxies)


@dataclass(frozen=True, slots=True)
class Rebuild:
    """Which parts a new generation cannot share with the running one."""

    facilitator: bool
    store: bool
    upstream: bool

    def names(self) -> list[str]:
        return [name for name in ("facilitator", "store", "upstream") if getattr(self, name)]


def rebuild(old: Settings, new: Settings) -> Rebuild:
    return Rebuild(
        facilitator=facilitator_key(old) != facilitator_key(new),
        store=old.store != new.store,
        upstream=upstream_key(old) != upstream_key(new),
    )


def route_rows(settings: Settings) -> list[dict[str, str]]:
    """The route table as text cells (`x402-gateway routes`, the admin `/routes`)."""
    return [
        {
            "index": str(r.index),
            "methods": ",".join(sorted(r.methods)) if r.methods else "*",
            "path": r.path,
            "price": "free" if r.free else " | ".join(format_price(a) for a in r.accepts),
            "settle": "-" if r.free else r.settle,
            "upstream": r.upstream or settings.upstream,
        }
        for r in settings.routes
    ]


# --- one generation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Gateway:
    """Everything one generation's requests share."""

    settings: Settings
    routes: RouteTable
    challenges: Challenges
    upstream: Upstream
    payments: Payments
    metrics: Metrics
    drop_headers: tuple[str, ...]
    generation: int
    refresher: asyncio.Task[None]
    users: InFlight = dataclasses.field(default_factory=InFlight)  # its requests in flight


async def build(
    settings: Settings, metrics: Metrics, generation: int, previous: Gateway | None
) -> Gateway:
    """A started generation; parts `previous` has and may share are reused."""
    todo = rebuild(previous.settings, settings) if previous else Rebuild(True, True, True)
    undo: list[Callable[[], Awaitable[None]]] = []
    try:
        if previous is None or todo.store:
            store = open_store(settings.store)
            undo.append(store.close)
        else:
            store = previous.payments.store
        if previous is not None and not (todo.facilitator or todo.store):
            payments, refresher = previous.payments, previous.refresher
        else:
            if previous is None or todo.facilitator:
                payments = Payments(open_facilitator(settings, metrics.facilitator_failed), store)
                undo.append(payments.close)
                problems = await payments.start()
            else:
                payments = Payments(previous.payments.facilitator, store)
                problems = await payments.refresh()
            for problem in problems:
                log.warning("facilitator_unavailable", problem=problem, generation=generation)
            refresher = asyncio.create_task(payments.keep_refreshing())
            undo.append(_canceller(refresher))
        if previous is None or todo.upstream:
            upstream = Upstream(settings)
            await upstream.start()
            undo.append(upstream.close)
        else:
            upstream = previous.upstream
        for problem in payments.unsupported(settings.routes):
            log.error("route_unsupported", problem=problem, generation=generation)
        return Gateway(
            settings=settings,
            routes=RouteTable(settings.routes, settings.case_insensitive_paths),
            challenges=Challenges(settings),
            upstream=upstream,
            payments=payments,
            metrics=metrics,
            drop_headers=(*PAYMENT_HEADERS, settings.payer_header),
            generation=generation,
            refresher=refresher,
        )
    except BaseException:
        for close in reversed(undo):
            await close()
        raise


def _canceller(task: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return cancel


def _parts(gw: Gateway) -> list[tuple[object, Callable[[], Awaitable[None]]]]:
    """(part, close) for each part a generation may share with another."""
    return [
        (gw.refresher, _canceller(gw.refresher)),
        (gw.upstream, gw.upstream.close),
        (gw.payments.facilitator, gw.payments.close),
        (gw.payments.store, gw.payments.store.close),
    ]


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# --- the live holder ---------------------------------------------------------------------


class LiveGateway:
    """The current generation (`current`), reloads, and the retirement of old generations."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._current: Gateway | None = None
        self._alive: list[Gateway] = []  # the current one and those with requests in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._closed = False
        self._deferred = False  # a reload asked for before start() finished

    @property
    def current(self) -> Gateway:
        if self._current is None:
            raise RuntimeError("the gateway has not started")
        return self._current

    async def start(self, settings: Settings, *, watch: bool = False) -> None:
        self._current = await build(settings, self.metrics, 1, None)
        self._alive.append(self._current)
        self.metrics.config_generation.set(1)
        if watch:
            self._spawn(self._watch(settings.source))
        if self._deferred:
            # The file was loaded before the signal came: read it again now.
            self._deferred = False
            self._spawn(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        await self.reload()

    async def reload(self) -> bool:
        """Load the config file again and swap it in; False (old config kept) if rejected."""
        async with self._lock:
            if self._closed:
                log.warning("config_reload_skipped", why="the gateway is shutting down")
                return False
            if self._current is None:
                # Still starting: a SIGHUP now must not be lost (a process manager may send
                # it right after spawning us), so it runs once start() is done.
                self._deferred = True
                log.info("config_reload_deferred", why="the gateway is still starting")
                return False
            old = self._current
            path = old.settings.source
            try:
                loaded = await asyncio.to_thread(load, path)
            except ConfigError as exc:
                return self._rejected(path, exc.errors)
            settings, needs_restart = pin_restart_only(old.settings, loaded)
            generation = old.generation + 1
            try:
                new = await build(settings, self.metrics, generation, old)
            # The old generation keeps serving whatever went wrong; the error is logged whole.
            except Exception as exc:
                log.exception("config_reload_build_failed", config=path)
                return self._rejected(path, [f"{type(exc).__name__}: {exc}"])
            self._current = new
            self._alive.append(new)
            self.metrics.config_generation.set(generation)
            for name in needs_restart:
                log.warning("config_needs_restart", setting=name, action="kept the running value")
            log.info(
                "config_reloaded",
                config=path,
                generation=generation,
                routes=len(settings.routes),
                rebuilt=rebuild(old.settings, settings).names(),
            )
            self._spawn(self._retire(old))
            return True

    def _rejected(self, path: str, errors: list[str]) -> bool:
        self.metrics.config_reload_failures.inc()
        log.error(
            "config_reload_failed",
            config=path,
            errors=errors,
            generation=self.current.generation,
            action="kept the running config",
        )
        return False

    async def _retire(self, old: Gateway) -> None:
        """Once `old` has no request in flight, close what no other live generation uses."""
        await old.users.wait_idle()
        in_use = {id(part) for gw in self._alive if gw is not old for part, _ in _parts(gw)}
        for part, close in _parts(old):
            if id(part) not in in_use:
                in_use.add(id(part))
                await close()
        self._alive.remove(old)
        log.debug("generation_retired", generation=old.generation)

    async def _watch(self, path: str) -> None:
        """`serve --watch`: reload when the file changes (polled: no extra dependency)."""
        seen = await asyncio.to_thread(_file_signature, path)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = await asyncio.to_thread(_file_signature, path)
            if now is not None and now != seen:
                seen = now
                log.info("config_changed", config=path)
                await self.reload()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """At shutdown, after the requests: stop watching and retiring, close every part."""
        self._closed = True
        async with self._lock:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            closed: set[int] = set()
            for gw in self._alive:
                for part, close in _parts(gw):
                    if id(part) not in closed:
                        closed.add(id(part))
                        await close()
            self._alive.clear()
