"""The async settlement engine for `exact` EIP-3009 payments on EVM (issue 13).

JSON-RPC on one aiohttp session, locally signed transactions pipelined from several settler
keys, one block-driven watcher for every receipt (stuck transactions replaced, reorged ones
re-landed), Multicall3 batching, local verification in one round trip.

Public face:
    EngineFacilitator   the gateway's facilitator interface (verify/settle/supported/...)
    EngineOptions       its settings (plain, frozen)
    EngineStats, KeyState, Observer   what it tells a metrics exporter
    ThreadDelegate      the seam for schemes it does not settle itself (SDK in a thread pool)
    make_app, run       the engine as an x402 facilitator over HTTP
    eip3009             the pure EIP-712 / signature / terms checks (no I/O)
"""

from __future__ import annotations

from gateway.payment import eip3009

from .delegate import Delegate, ThreadDelegate
from .facilitator import EngineFacilitator
from .options import EngineOptions
from .service import make_app, run
from .stats import EngineStats, KeyState, Observer

__all__ = [
    "Delegate",
    "EngineFacilitator",
    "EngineOptions",
    "EngineStats",
    "KeyState",
    "Observer",
    "ThreadDelegate",
    "eip3009",
    "make_app",
    "run",
]
