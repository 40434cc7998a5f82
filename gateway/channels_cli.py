"""`x402-gateway channels`: the batch-settlement channels in the store (issue 14).

    x402-gateway channels [--format table|jsonl]   every channel: balance, charged, claimed,
                                                    unclaimed; a total owed per receiver
    x402-gateway channels claim (--all | ID...)     claim (and settle) now, through the
                                                    config's facilitator, as the schedule does
    x402-gateway channels refund ID...              cooperative refund: claim what is owed,
                                                    return the rest of the deposit to the payer

Channels live in the store named by `store:`; with `store: memory` they are inside the
gateway process and this command cannot see them. `claim` and `refund` take the same claim
lock as the gateway's schedule, so they never run beside a round (exit 3: try again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from decimal import Decimal
from typing import Any

from gateway.config.settings import Settings

EXIT_FAILED = 1
EXIT_BUSY = 3


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser("channels", help="list batch-settlement channels; claim or refund now")
    cmd.add_argument("--config", "-c", help="config file (default: $X402_GATEWAY_CONFIG)")
    cmd.add_argument("--format", choices=["table", "jsonl"], default="table")
    actions = cmd.add_subparsers(dest="action")
    claim = actions.add_parser("claim", help="claim served vouchers on chain now, then settle")
    claim.add_argument("--config", "-c", dest="action_config", metavar="CONFIG")
    which = claim.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every channel that owes anything")
    which.add_argument("ids", nargs="*", default=[], metavar="ID", help="channel ids", type=str)
    refund = actions.add_parser("refund", help="cooperative refund of these channels")
    refund.add_argument("--config", "-c", dest="action_config", metavar="CONFIG")
    refund.add_argument("ids", nargs="+", metavar="ID", help="channel ids")


def config_path(args: argparse.Namespace) -> str | None:
    """`--config` given after `claim`/`refund` counts as well as before."""
    given: str | None = getattr(args, "action_config", None) or args.config
    return given


def main(settings: Settings, args: argparse.Namespace) -> int:
    if settings.store == "memory":
        print("error: store: memory keeps channels inside the gateway process", file=sys.stderr)
        return EXIT_FAILED
    if not channel_store(settings.store):
        print("error: channels live in one Redis server; this store holds none", file=sys.stderr)
        return EXIT_FAILED
    if args.action == "claim":
        if not args.all and not args.ids:
            print("error: channels claim needs --all or channel ids", file=sys.stderr)
            return EXIT_FAILED
        return asyncio.run(_act(settings, "claim", args.ids or None))
    if args.action == "refund":
        return asyncio.run(_act(settings, "refund", args.ids))
    return asyncio.run(_list(settings, args.format))


def channel_store(store: str) -> bool:
    """Whether channels can live in `store`: one Redis server, not Sentinel or Cluster
    (`gateway/store/channels.py`)."""
    from gateway.store.redis_url import parse_redis_url

    return parse_redis_url(store).kind == "single"


def _stderr_logger() -> Any:
    """The schedule's log lines (a claim, a refusal) as JSON on stderr: stdout holds the
    results. A logger of its own: the process's logging is left as it is."""
    import structlog

    return structlog.wrap_logger(
        structlog.PrintLogger(file=sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )


async def _list(settings: Settings, fmt: str) -> int:
    from gateway.errors import StoreUnavailable
    from gateway.payment.channel_claims import Grouper, unclaimed
    from gateway.payment.channel_service import claim_networks, decimals_of
    from gateway.store.channels import RedisChannelStorage

    storage = RedisChannelStorage(settings.store)
    try:
        channels = await asyncio.to_thread(storage.list)
    except StoreUnavailable as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        storage.close()
    grouper = Grouper(claim_networks(settings))
    decimals = decimals_of(settings)
    rows = []
    for channel in sorted(channels, key=lambda c: c.channel_id):
        network = grouper.network_of(channel)
        config = channel.channel_config
        rows.append(
            {
                "channel": channel.channel_id,
                "network": network or "?",
                "payer": config.payer,
                "receiver": config.receiver,
                "token": config.token,
                "balance": int(channel.balance),
                "charged": int(channel.charged_cumulative_amount),
                "claimed": int(channel.total_claimed),
                "unclaimed": unclaimed(channel),
                "withdrawing": channel.withdraw_requested_at > 0,
                "decimals": decimals(network or "", config.token),
            }
        )
    if fmt == "jsonl":
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_table(rows))
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per channel (amounts in dollars of the token), then the total owed."""
    head = ("CHANNEL", "NETWORK", "PAYER", "BALANCE", "CHARGED", "CLAIMED", "UNCLAIMED", "")
    lines: list[tuple[str, ...]] = [head]
    owed = Decimal(0)
    for row in rows:
        unit = Decimal(10) ** -int(row["decimals"])
        dollars = [Decimal(row[k]) * unit for k in ("balance", "charged", "claimed", "unclaimed")]
        owed += dollars[3]
        lines.append(
            (
                row["channel"][:18] + "…",
                row["network"],
                row["payer"],
                *(f"${d:f}" for d in dollars),
                "withdrawing" if row["withdrawing"] else "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    text.append(f"{len(rows)} channel(s), ${owed:f} unclaimed")
    return "\n".join(text)


async def _act(settings: Settings, action: str, ids: list[str] | None) -> int:
    """`claim` or `refund` through the config's facilitator, under the claim lock."""
    from gateway.facilitators import open_facilitator
    from gateway.payment.channel_scheduler import CLAIM_ERRORS
    from gateway.payment.channel_service import make_scheduler
    from gateway.store import open_store
    from gateway.store.channels import RedisChannelStorage
    from gateway.store.claim_lock import open_claim_lock

    store = open_store(settings.store)
    storage = RedisChannelStorage(settings.store)
    facilitator = open_facilitator(settings)
    try:
        await facilitator.start()
        for problem in await facilitator.refresh_supported():
            print(f"warning: {problem}", file=sys.stderr)
        lock = open_claim_lock(store)
        scheduler = make_scheduler(settings, storage, facilitator, lock, logger=_stderr_logger())
        if action == "refund":
            return _print_refunds(await scheduler.refund(ids or []))
        from x402.mechanisms.evm.batch_settlement.utils import normalize_channel_id

        only = frozenset(normalize_channel_id(i) for i in ids) if ids else None
        return _print_outcomes(await scheduler.claim_now(only))
    except CLAIM_ERRORS as exc:  # the store, or a refund the facilitator refused
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await facilitator.close()
        storage.close()
        await store.close()


def _print_outcomes(outcomes: list[Any] | None) -> int:
    if outcomes is None:
        print("error: a gateway is claiming right now; try again", file=sys.stderr)
        return EXIT_BUSY
    for o in outcomes:
        row = {
            "target": o.target.key,
            "reason": o.reason,
            "vouchers": o.vouchers,
            "amount": o.amount,
            "claims": list(o.claims),
            "settle": o.settle,
            "error": o.error,
        }
        print(json.dumps(row))
    print(f"{len(outcomes)} target(s) claimed", file=sys.stderr)
    return EXIT_FAILED if any(o.error for o in outcomes) else 0


def _print_refunds(results: list[Any] | None) -> int:
    if results is None:
        print("error: a gateway is claiming right now; try again", file=sys.stderr)
        return EXIT_BUSY
    for r in results:
        print(json.dumps({"channel": r.channel, "transaction": r.transaction}))
    print(f"{len(results)} channel(s) refunded", file=sys.stderr)
    return 0
