"""Facilitators: remote ones over HTTP (with failover), or the SDK's own run in-process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..settings import LocalFacilitatorSettings, RemoteFacilitatorSettings, Settings

if TYPE_CHECKING:
    from ..payments import Facilitator


def open_facilitator(settings: Settings) -> Facilitator:
    local = [f for f in settings.facilitators if isinstance(f, LocalFacilitatorSettings)]
    if local:
        from .local import LocalFacilitator

        networks = sorted({req.network for r in settings.routes for req in r.accepts})
        return LocalFacilitator(
            local[0].rpc_url, local[0].private_key, networks or [settings.network]
        )
    from .remote import RemoteFacilitator

    remote = [f for f in settings.facilitators if isinstance(f, RemoteFacilitatorSettings)]
    return RemoteFacilitator(remote)
