"""Hot reload (SIGHUP, `serve --watch`): the live generation, and swapping in a new one.

A `Generation` (gateway/generation.py, built by gateway/composition.py) is everything one
config's requests share. A request takes the current generation once, when it starts, and
keeps it to its end, so a reload never changes the table under a request in flight.

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
import dataclasses
import gc
import os
from collections.abc import Awaitable
from typing import Any

from gateway.composition import Parts, Rebuild, Reuse, build
from gateway.config import load
from gateway.config.settings import LocalFacilitatorSettings, Settings
from gateway.errors import ConfigError
from gateway.facilitators.chain import rpc_urls
from gateway.generation import Generation
from gateway.observe.logs import get_logger
from gateway.observe.metrics import Metrics

log = get_logger("gateway.reload")

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
    if settings.verify == "local":  # wraps the remote client, reads the chain at its RPCs
        return (settings.facilitators, settings.verify, tuple(sorted(rpc_urls(settings).items())))
    return (settings.facilitators, settings.verify)


def channels_key(settings: Settings) -> tuple[object, ...]:
    """What the payments' batch-settlement schemes are built from (gateway/payment/channels.py:
    registered with the payments, so a change builds new payments; the channel state is kept)."""
    offered = {
        (req.network, req.pay_to)
        for route in settings.routes
        if route.channel is not None
        for req in route.accepts
    }
    return (settings.channels, tuple(sorted(offered))) if offered else ()


def upstream_key(settings: Settings) -> tuple[object, ...]:
    return (settings.timeouts, settings.limits, settings.trusted_proxies)


def rebuild(old: Settings, new: Settings) -> Rebuild:
    """Which parts of the running generation the new settings cannot share."""
    return Rebuild(
        facilitator=facilitator_key(old) != facilitator_key(new)
        or channels_key(old) != channels_key(new),
        store=old.store != new.store,
        upstream=upstream_key(old) != upstream_key(new),
    )


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# --- the live holder ---------------------------------------------------------------------


class LiveGateway:
    """The current generation (`current`), reloads, and the retirement of old generations."""

    def __init__(
        self,
        metrics: Metrics,
        parts: Parts | None = None,
        *,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self.metrics = metrics
        self.parts = parts if parts is not None else Parts()
        self.watch_interval = watch_interval
        self._current: Generation | None = None
        self._alive: list[Generation] = []  # the current one and those with requests in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._closed = False
        self._deferred = False  # a reload asked for before start() finished

    @property
    def current(self) -> Generation:
        if self._current is None:
            raise RuntimeError("the gateway has not started")
        return self._current

    async def start(self, settings: Settings, *, watch: bool = False) -> None:
        self._current = await build(settings, self.metrics, 1, self.parts)
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
                todo = rebuild(old.settings, settings)
                new = await build(settings, self.metrics, generation, self.parts, Reuse(old, todo))
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
                rebuilt=todo.names(),
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

    async def _retire(self, old: Generation) -> None:
        """Once `old` has no request in flight, close what no other live generation uses."""
        await old.users.wait_idle()
        await self._close_unshared(old)
        # Start-up froze the first generation (gateway.serving.runner): let a retired one's
        # cycles be collected (full collections scan everything again, as without freeze).
        gc.unfreeze()
        log.debug("generation_retired", generation=old.generation)

    async def _close_unshared(self, old: Generation) -> None:
        """Close each part of `old` that no other live generation lists (a part shared
        with a later generation is closed with the last one), and forget `old`."""
        in_use = {
            id(part) for gen in self._alive if gen is not old for part, _ in gen.shared_parts()
        }
        for part, close in old.shared_parts():
            if id(part) not in in_use:
                in_use.add(id(part))
                await close()
        self._alive.remove(old)

    async def _watch(self, path: str) -> None:
        """`serve --watch`: reload when the file changes (polled: no extra dependency)."""
        seen = await asyncio.to_thread(_file_signature, path)
        while True:
            await asyncio.sleep(self.watch_interval)
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
            # Oldest first, like retirements: a part the newer ones share (the channel
            # storage their claim schedule reads) closes after all its users have.
            for gen in list(self._alive):
                await self._close_unshared(gen)
