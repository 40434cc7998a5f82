"""`x402-gateway facilitator`: the settlement engine served as an x402 facilitator
(/verify, /settle, /supported, /readyz, bearer auth), so several gateway replicas, or any
x402 server, share one settler and its nonce order.

Settings come from `--config` (its `facilitator.local` and `network`) and/or flags; a flag
wins. Keys and the bearer token are read from environment variables named on the command
line (`--key-env NAME`), never from argv: a process's argv is readable by every local user.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from typing import Any

from gateway import formats
from gateway.config.settings import LocalFacilitatorSettings, Settings
from gateway.config.values import parse_listen, parse_private_key

DEFAULT_LISTEN = "127.0.0.1:4021"


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser("facilitator", help="serve the settlement engine as an x402 facilitator")
    cmd.add_argument("--config", "-c", help="read facilitator.local and network from this file")
    cmd.add_argument("--rpc-url", help="the chain's JSON-RPC endpoint")
    cmd.add_argument(
        "--key-env",
        action="append",
        default=[],
        metavar="NAME",
        help="environment variable holding a settler key (repeat for more keys)",
    )
    cmd.add_argument("--chain-id", type=int, help="the chain id (default: from network, or ask)")
    cmd.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"host:port (default {DEFAULT_LISTEN})"
    )
    cmd.add_argument("--token-env", metavar="NAME", help="environment variable: bearer token")
    cmd.add_argument("--batch-window", help="e.g. 20ms; 0: off")
    cmd.add_argument("--max-batch", type=int)
    cmd.add_argument("--poll-interval", help="how often the chain head is read (default 250ms)")
    cmd.add_argument(
        "--min-gas-balance", help="readiness floor per settler: wei, 50 gwei, 0.01 eth"
    )


def main(args: argparse.Namespace, settings: Settings | None) -> int:
    """Build the engine from `settings` (if any) and the flags, and serve it until SIGTERM."""
    from gateway.config.facilitators import parse_wei
    from gateway.facilitators import chain_id, engine_options
    from gateway.facilitators.engine import EngineFacilitator, run

    try:
        local, chain = local_settings(args, settings)
        changes: dict[str, Any] = {}
        if args.batch_window is not None:
            changes["batch_window"] = formats.parse_duration(args.batch_window, allow_zero=True)
        if args.poll_interval is not None:
            changes["poll_interval"] = formats.parse_duration(args.poll_interval)
        if args.max_batch is not None:
            changes["max_batch"] = args.max_batch
        if args.min_gas_balance is not None:
            changes["min_gas_balance"] = parse_wei(args.min_gas_balance)
        local = dataclasses.replace(local, **changes)
        options = engine_options(local, args.chain_id or chain_id(chain))
        listen = parse_listen(args.listen)
        token = _env(args.token_env) if args.token_env else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine = EngineFacilitator(options)

    def listening(url: str) -> None:
        print(f"facilitator listening on {url} ({len(options.keys)} settler key(s))", flush=True)

    asyncio.run(run(engine, listen.host, listen.port, token=token, on_listening=listening))
    return 0


def local_settings(
    args: argparse.Namespace, settings: Settings | None
) -> tuple[LocalFacilitatorSettings, str]:
    """The engine's settings from the config's `facilitator.local`, then the flags."""
    network = settings.network if settings is not None else ""
    found = [
        f
        for f in (settings.facilitators if settings else ())
        if isinstance(f, LocalFacilitatorSettings)
    ]
    keys = tuple(_key(name) for name in args.key_env)
    if found:
        local = found[0]
        if keys:
            local = dataclasses.replace(local, private_key=keys[0], more_keys=keys[1:])
        if args.rpc_url:
            local = dataclasses.replace(local, rpc_url=args.rpc_url)
        return local, network
    if settings is not None and not (args.rpc_url and keys):
        raise ValueError(f"{settings.source}: no facilitator.local (or give --rpc-url, --key-env)")
    if not args.rpc_url or not keys:
        raise ValueError("give --config FILE with facilitator.local, or --rpc-url and --key-env")
    return LocalFacilitatorSettings(args.rpc_url, keys[0], more_keys=keys[1:]), network


def _key(name: str) -> str:
    try:
        return parse_private_key(_env(name))
    except ValueError as exc:  # the message never holds the value
        raise ValueError(f"environment variable {name} {exc}") from None


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"environment variable {name} is not set")
    return value
