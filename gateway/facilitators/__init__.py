"""Facilitators: remote ones over HTTP (with failover), or the settlement engine in-process."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config.settings import LocalFacilitatorSettings, RemoteFacilitatorSettings, Settings

if TYPE_CHECKING:
    from gateway.facilitators.engine import EngineFacilitator, EngineOptions, Observer
    from gateway.payment.facilitator import Facilitator


def open_facilitator(
    settings: Settings,
    on_failure: Callable[[str, str], None] | None = None,
    observer: Observer | None = None,
) -> Facilitator:
    """The facilitator client for `settings`; `on_failure(url, operation)` is told of each
    failed call to a remote endpoint (for metrics); `observer` of the engine's events."""
    local = [f for f in settings.facilitators if isinstance(f, LocalFacilitatorSettings)]
    if local:
        return open_engine(settings, local[0], observer)  # verifies in process already
    from gateway.facilitators.remote import RemoteFacilitator

    remote = [f for f in settings.facilitators if isinstance(f, RemoteFacilitatorSettings)]
    if settings.verify == "local":
        from gateway.facilitators.chain import rpc_urls
        from gateway.facilitators.local_verify import LocalVerify

        return LocalVerify(RemoteFacilitator(remote, on_failure), rpc_urls=rpc_urls(settings))
    return RemoteFacilitator(remote, on_failure)


def open_engine(
    settings: Settings, local: LocalFacilitatorSettings, observer: Observer | None = None
) -> EngineFacilitator:
    """The settlement engine on `settings.network`'s chain. Other schemes (Permit2, other
    chains) go to the SDK's facilitator only when `delegate_key` is set: that key is the
    SDK's alone, since two nonce managers (web3's pending count and the engine's pipeline)
    on one key would hand out the same nonce twice."""
    from gateway.facilitators.engine import EngineFacilitator, ThreadDelegate

    delegate = None
    if local.delegate_key is not None:
        networks = sorted({req.network for r in settings.routes for req in r.accepts})
        delegate = ThreadDelegate.sdk_exact(
            local.rpc_url,
            local.delegate_key,
            networks or [settings.network],
            settings.channels.authorizer_key,
        )
    return EngineFacilitator(
        engine_options(local, chain_id(settings.network)), delegate=delegate, observer=observer
    )


def engine_options(local: LocalFacilitatorSettings, chain: int | None) -> EngineOptions:
    from gateway.facilitators.engine import EngineOptions

    return EngineOptions(
        rpc_url=local.rpc_url,
        keys=local.keys,
        chain_id=chain,
        batch_window=local.batch_window,
        max_batch=local.max_batch,
        confirmation_timeout=local.timeout,
        poll_interval=local.poll_interval,
        min_gas_balance=local.min_gas_balance,
        max_fee_per_gas=local.max_fee_per_gas,
        reorg_depth=local.reorg_depth,
        stuck_blocks=local.stuck_blocks,
        stuck_seconds=local.stuck_seconds,
    )


def chain_id(network: str) -> int | None:
    """The EVM chain id of a CAIP-2 (`eip155:84532`) or v1 (`base-sepolia`) name; None for
    another family (the engine then asks its node once at start)."""
    from gateway import formats
    from gateway.payment.networks import caip_from_v1

    return formats.chain_id(caip_from_v1(network) or network)
