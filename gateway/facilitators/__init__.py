"""Facilitators: remote ones over HTTP (with failover), or the SDK's own run in-process."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config.settings import LocalFacilitatorSettings, RemoteFacilitatorSettings, Settings

if TYPE_CHECKING:
    from gateway.payment.engine import Facilitator


def open_facilitator(
    settings: Settings, on_failure: Callable[[str, str], None] | None = None
) -> Facilitator:
    """The facilitator client for `settings`; `on_failure(url, operation)` is told of each
    failed call to a remote endpoint (for metrics)."""
    local = [f for f in settings.facilitators if isinstance(f, LocalFacilitatorSettings)]
    if local:
        from gateway.facilitators.local import LocalFacilitator

        networks = sorted({req.network for r in settings.routes for req in r.accepts})
        return LocalFacilitator(
            local[0].rpc_url, local[0].private_key, networks or [settings.network]
        )
    from gateway.facilitators.remote import RemoteFacilitator

    remote = [f for f in settings.facilitators if isinstance(f, RemoteFacilitatorSettings)]
    return RemoteFacilitator(remote, on_failure)
