"""gateway.reload: what a reload may change, what it rebuilds, and the live holder's swap,
rejection, retirement of old generations and file watching (real parts: memory store,
upstream pool, remote facilitator client pointed at a closed port)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load, loads
from gateway.config.settings import Address, LocalFacilitatorSettings
from gateway.observe.metrics import Metrics
from gateway.proxy.routes import route_rows
from gateway.reload import (
    LiveGateway,
    pin_restart_only,
    rebuild,
)
from tests.procs import free_port

PAY_TO = "0x000000000000000000000000000000000000dEaD"


def config_text(
    price: str = "$0.001",
    read: str = "60s",
    facilitator_timeout: str = "10s",
    listen: str = "127.0.0.1:8402",
    extra: str = "",
) -> str:
    return f"""
listen: {listen}
upstream: http://127.0.0.1:9
facilitator: {{url: "http://127.0.0.1:{CLOSED_PORT}", timeout: {facilitator_timeout}}}
network: eip155:84532
pay_to: "{PAY_TO}"
timeouts: {{read: {read}}}
{extra}
routes:
  - path: /paid/*
    price: "{price}"
  - path: /free/*
    price: free
"""


CLOSED_PORT = free_port()  # nothing listens: the facilitator is "down", start-up goes on


# --- pure decisions ----------------------------------------------------------------------


def test_restart_only_settings_keep_their_running_values() -> None:
    running = loads(config_text())
    loaded = loads(config_text(price="$0.002", listen="127.0.0.1:9999", extra="log_level: debug"))
    loaded = dataclasses.replace(
        loaded, workers=2, timeouts=dataclasses.replace(loaded.timeouts, keepalive=5.0, connect=1.0)
    )
    effective, changed = pin_restart_only(running, loaded)
    assert changed == ["listen", "workers", "log_level", "timeouts.keepalive"]
    assert effective.listen == Address("127.0.0.1", 8402)
    assert (effective.workers, effective.log_level) == (1, "info")
    assert effective.timeouts.keepalive == running.timeouts.keepalive
    assert effective.timeouts.connect == 1.0  # not restart-only: the new value
    assert effective.routes == loaded.routes  # the new prices
    assert pin_restart_only(running, running) == (running, [])


def test_rebuild_names_only_the_parts_whose_settings_changed() -> None:
    base = loads(config_text())
    assert rebuild(base, loads(config_text(price="$0.5"))).names() == []
    assert rebuild(base, loads(config_text(read="5s"))).names() == ["upstream"]
    assert rebuild(base, loads(config_text(facilitator_timeout="3s"))).names() == ["facilitator"]
    assert rebuild(base, dataclasses.replace(base, store="redis://127.0.0.1:1/0")).names() == [
        "store"
    ]


def test_verify_local_is_rebuilt_when_its_rpc_url_changes() -> None:
    def with_rpc(verify: str, port: int) -> str:
        rpc = f"networks: {{eip155:84532: {{rpc_url: http://127.0.0.1:{port}}}}}"
        return config_text(extra=f"verify: {verify}\n{rpc}")

    local = loads(with_rpc("local", 8545))
    assert rebuild(local, loads(with_rpc("local", 8545))).names() == []
    assert rebuild(local, loads(with_rpc("local", 8546))).names() == ["facilitator"]
    remote = loads(with_rpc("facilitator", 8545))  # reconciliation reads it elsewhere
    assert rebuild(remote, loads(with_rpc("facilitator", 8546))).names() == []


def test_a_local_facilitator_is_rebuilt_when_the_routes_networks_change() -> None:
    local = (LocalFacilitatorSettings(rpc_url="http://127.0.0.1:8545", private_key="0x01"),)
    base = dataclasses.replace(loads(config_text()), facilitators=local)
    same_networks = dataclasses.replace(base, routes=base.routes[:1])
    assert rebuild(base, same_networks).names() == []
    no_paid = dataclasses.replace(base, routes=base.routes[1:])
    assert rebuild(base, no_paid).names() == ["facilitator"]


def test_route_rows_describe_the_table() -> None:
    rows = route_rows(loads(config_text()))
    assert rows[0] == {
        "index": "0",
        "methods": "*",
        "path": "/paid/*",
        "price": "$0.001 (1000 atomic units of USDC)",
        "settle": "after",
        "upstream": "http://127.0.0.1:9",
    }
    assert rows[1]["price"] == "free" and rows[1]["settle"] == "-"


# --- the live holder ---------------------------------------------------------------------


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[LiveGateway, Path]]:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text())
    holder = LiveGateway(Metrics())
    await holder.start(load(path))
    try:
        yield holder, path
    finally:
        await holder.close()


def metric(holder: LiveGateway, name: str) -> float:
    value = holder.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def record_closes(obj: Any, name: str, log: list[str]) -> None:
    original: Callable[[], Any] = obj.close

    async def close() -> None:
        log.append(name)
        await original()

    obj.close = close


async def test_a_valid_file_becomes_the_next_generation_sharing_unchanged_parts(
    live: tuple[LiveGateway, Path],
) -> None:
    holder, path = live
    first = holder.current
    assert first.generation == 1 and metric(holder, "x402_gateway_config_generation") == 1
    path.write_text(config_text(price="$0.002"))
    assert await holder.reload()
    second = holder.current
    assert second.generation == 2 and metric(holder, "x402_gateway_config_generation") == 2
    paid = second.routes.match("GET", "/paid/x").route
    assert paid is not None and paid.accepts[0].amount == 2000
    assert second.upstream is first.upstream and second.payments is first.payments
    assert second.refresher is first.refresher


async def test_an_invalid_file_is_rejected_and_counted(live: tuple[LiveGateway, Path]) -> None:
    holder, path = live
    first = holder.current
    path.write_text(config_text(price="lots"))
    assert not await holder.reload()
    path.unlink()
    assert not await holder.reload()
    assert holder.current is first
    assert metric(holder, "x402_gateway_config_reload_failures_total") == 2
    assert metric(holder, "x402_gateway_config_generation") == 1


async def test_replaced_parts_close_only_when_no_generation_uses_them(
    live: tuple[LiveGateway, Path],
) -> None:
    holder, path = live
    closed: list[str] = []
    g1 = holder.current
    record_closes(g1.upstream, "upstream1", closed)
    record_closes(g1.payments.facilitator, "facilitator1", closed)
    record_closes(g1.payments.store, "store", closed)
    gc.freeze()  # as the runner does once started
    async with g1.users.track():  # a request of generation 1 in flight
        path.write_text(config_text(price="$0.002"))  # g2 shares g1's parts
        assert await holder.reload()
        path.write_text(config_text(read="5s", facilitator_timeout="3s"))  # g3: new ones
        assert await holder.reload()
        g3 = holder.current
        assert g3.generation == 3 and g3.upstream is not g1.upstream
        assert g3.payments.store is g1.payments.store  # claims survive the reload
        await asyncio.sleep(0.05)
        assert closed == []  # g2 retired, but g1 still needs the old parts
    await asyncio.sleep(0.05)
    assert sorted(closed) == ["facilitator1", "upstream1"]
    # what start-up froze (g1 among it) is collectable again once g1 has retired
    assert gc.get_freeze_count() == 0
    record_closes(g3.upstream, "upstream3", closed)
    await holder.close()
    assert sorted(closed) == ["facilitator1", "store", "upstream1", "upstream3"]
    assert not await holder.reload()  # closed: nothing more to reload


async def test_watch_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text())
    holder = LiveGateway(Metrics(), watch_interval=0.02)
    await holder.start(load(path), watch=True)
    try:
        await asyncio.sleep(0.1)
        assert holder.current.generation == 1  # nothing changed: no reload
        path.write_text(config_text(price="$0.003"))
        for _ in range(200):
            if holder.current.generation == 2:
                break
            await asyncio.sleep(0.02)
        assert holder.current.generation == 2
    finally:
        await holder.close()


async def test_a_reload_asked_for_while_starting_runs_once_started(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text())
    settings = load(path)  # read before the signal, as `serve` does
    holder = LiveGateway(Metrics())
    path.write_text(config_text(price="$0.004"))
    assert not await holder.reload()  # not serving yet: deferred, not lost
    await holder.start(settings)
    try:
        for _ in range(200):
            if holder.current.generation == 2:
                break
            await asyncio.sleep(0.01)
        paid = holder.current.routes.match("GET", "/paid/x").route
        assert holder.current.generation == 2
        assert paid is not None and paid.accepts[0].amount == 4000
    finally:
        await holder.close()


def test_payments_are_rebuilt_when_the_channels_change() -> None:
    from decimal import Decimal

    from gateway.config.settings import ChannelsSettings, ChannelTerms

    base = loads(config_text())
    priced = next(route for route in base.routes if not route.free)
    with_channel = dataclasses.replace(
        base,
        routes=tuple(
            dataclasses.replace(r, channel=ChannelTerms(Decimal(1))) if r is priced else r
            for r in base.routes
        ),
    )
    assert rebuild(base, with_channel).names() == ["facilitator"]  # payments built anew
    assert rebuild(with_channel, with_channel).names() == []
    delay = dataclasses.replace(with_channel, channels=ChannelsSettings(withdraw_delay=900))
    assert rebuild(with_channel, delay).names() == ["facilitator"]
    # without a channel route the channels' own settings change nothing
    assert rebuild(base, dataclasses.replace(base, channels=delay.channels)).names() == []
