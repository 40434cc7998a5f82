"""`x402-gateway`: serve | check | routes | payments | channels | facilitator | demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.config.settings import Address, Settings
from gateway.errors import ConfigError, StoreUnavailable

CONFIG_ENV = "X402_GATEWAY_CONFIG"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.command == "serve":
        # SIGHUP (reload) must never end a starting gateway: hold it back from the first
        # moment, before the heavy imports; the server delivers it once it can reload.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    if args.command == "demo":
        from gateway.demo.walkthrough import run_demo

        return run_demo(once=args.once)
    if args.command == "facilitator":
        return _facilitator(args)
    if args.command == "channels":
        from gateway.channels_cli import config_path

        args.config = config_path(args)  # `--config` also after `claim` / `refund`
    settings = _load(_config_path(args, parser))
    if settings is None:
        return 1
    command = {"check": _check, "routes": _routes, "payments": _list_payments, "serve": _serve}
    command["channels"] = _channels
    return command[args.command](settings, args)


def _load(path: str) -> Settings | None:
    """The settings, or None once every problem has been printed."""
    from gateway.config import load

    try:
        return load(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        print(f"{len(exc.errors)} error(s); nothing was started", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot read config: {exc}", file=sys.stderr)
    return None


def _check(settings: Settings, args: argparse.Namespace) -> int:
    return check(settings, online=args.online)


def _routes(settings: Settings, _args: argparse.Namespace) -> int:
    return routes(settings)


def _list_payments(settings: Settings, args: argparse.Namespace) -> int:
    if args.reconcile:
        return asyncio.run(reconcile_payments(settings, args.limit))
    return asyncio.run(_payments(settings, args.limit, args.format))


def _channels(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import channels_cli

    return channels_cli.main(settings, args)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import functools

    from gateway.app import create_admin_app, create_app
    from gateway.serving.runner import run

    make_app = functools.partial(create_app, watch=args.watch)
    return run(settings, make_app, create_admin_app if settings.admin else None)


def _facilitator(args: argparse.Namespace) -> int:
    from gateway import facilitator_cli as command

    settings = _load(args.config) if args.config else None
    if args.config and settings is None:
        return 1
    return command.main(args, settings)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x402-gateway", description=__doc__)
    p.add_argument("--version", action="version", version=f"x402-gateway {__version__}")
    sub = p.add_subparsers(dest="command")
    for name, help_text in [
        ("serve", "run the gateway"),
        ("check", "validate the config and print the compiled route table"),
        ("routes", "print the live route table (from the running gateway's admin port)"),
        ("payments", "list recent payment records from the store"),
    ]:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", "-c", help=f"config file (default: ${CONFIG_ENV})")
        if name == "serve":
            cmd.add_argument(
                "--watch",
                action="store_true",
                help="reload the config whenever the file changes (SIGHUP always reloads)",
            )
        if name == "check":
            cmd.add_argument(
                "--online", action="store_true", help="also ask each facilitator's /supported"
            )
        if name == "payments":
            cmd.add_argument("--limit", type=int, default=100)
            cmd.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
            cmd.add_argument(
                "--reconcile",
                action="store_true",
                help="resolve records a dead gateway left in flight against the chain; "
                "print each change",
            )
    from gateway.facilitator_cli import add_parser

    add_parser(sub)
    from gateway.channels_cli import add_parser as add_channels_parser

    add_channels_parser(sub)
    demo = sub.add_parser("demo", help="the offline demo: local chain, token, a paid request")
    demo.add_argument("--once", action="store_true", help="run the walkthrough once and exit")
    return p


def _config_path(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    path: str | None = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        parser.error(f"--config FILE or ${CONFIG_ENV} is required")
    return path


def route_table(settings: Settings) -> str:
    from gateway.proxy.routes import route_rows

    return format_rows(route_rows(settings))


def format_rows(table: list[dict[str, str]]) -> str:
    columns = ("index", "methods", "path", "price", "settle", "upstream")
    rows: list[tuple[str, ...]] = [("#", "METHODS", "PATH", "PRICE", "SETTLE", "UPSTREAM")]
    rows += [tuple(row.get(c, "") for c in columns) for row in table]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def routes(settings: Settings) -> int:
    """The table the running gateway serves now (it may have reloaded since it started);
    the file's own table, with a note, when no gateway answers on the admin address."""
    live = _live_routes(settings)
    if isinstance(live, str):
        print(f"note: {live}; showing the table from {settings.source}", file=sys.stderr)
        print(route_table(settings))
        return 0
    print(f"# live: {live['config']}, generation {live['generation']}")
    print(format_rows(live["routes"]))
    return 0


def _live_routes(settings: Settings) -> dict[str, Any] | str:
    """The admin `/routes` answer, or why there is none."""
    import json
    import urllib.request

    if settings.admin is None:
        return "no admin address is configured"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.admin.host, settings.admin.host)
    url = f"http://{Address(host, settings.admin.port)}/routes"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
    except (OSError, ValueError) as exc:  # urllib.error.URLError is an OSError
        reason = getattr(exc, "reason", exc)
        return f"no gateway answered at {url} ({reason})"
    return answer


def check(settings: Settings, *, online: bool) -> int:
    from gateway.proxy.routes import RouteTable

    print(f"{settings.source}: ok")
    print(route_table(settings))
    table = RouteTable(settings.routes, settings.case_insensitive_paths)
    for shadowed, by in table.shadowed():
        print(
            f"warning: {shadowed.source or settings.source} routes[{shadowed.index}] "
            f"{shadowed.path} is shadowed by routes[{by.index}] {by.path} and never matches",
            file=sys.stderr,
        )
    for line in reconcile_gaps(settings):
        print(f"warning: {line}", file=sys.stderr)
    from gateway.payment.channel_service import schedule_warnings

    for line in schedule_warnings(settings):
        print(f"warning: {line}", file=sys.stderr)
    if online:
        problems = asyncio.run(_check_online(settings))
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if problems:
            return 1
        print("facilitators: every priced route is supported")
    return 0


async def _check_online(settings: Settings) -> list[str]:
    from gateway.facilitators import open_facilitator
    from gateway.payment.engine import Payments
    from gateway.store import open_store

    payments = Payments(open_facilitator(settings), open_store("memory"))
    try:
        errors = await payments.start()
        return errors + payments.unsupported(settings.routes)
    finally:
        await payments.close()


def reconcile_gaps(settings: Settings) -> list[str]:
    """Priced networks without an RPC URL: a crash mid-settlement cannot be reconciled there."""
    from gateway.facilitators.chain import rpc_urls

    priced = {req.network for r in settings.routes if not r.free for req in r.accepts}
    return [
        f"no RPC URL for {network} (networks: {{{network}: {{rpc_url: ...}}}}): a payment a "
        "crashed gateway left settling stays in flight until its claim expires"
        for network in sorted(priced - set(rpc_urls(settings)))
    ]


async def reconcile_payments(settings: Settings, limit: int) -> int:
    """`payments --reconcile`: one JSON line per record changed, a count on stderr."""
    import json

    from gateway.facilitators.chain import open_chain, settle_timeout
    from gateway.observe.logs import configure_logging
    from gateway.payment.channel_service import wanted
    from gateway.payment.reconcile import SETTLE_MARGIN
    from gateway.payment.recovery import Reconciler, reconcile_recent
    from gateway.store import open_store
    from gateway.store.channels import ChannelCharges, close_channel_storage, open_channel_storage

    if settings.store == "memory":
        print("error: store: memory keeps records inside the gateway process", file=sys.stderr)
        return 1
    chain = open_chain(settings)
    if chain is None and not wanted(settings):  # channel payments need no chain read
        for line in reconcile_gaps(settings):
            print(f"error: {line}", file=sys.stderr)
        return 1
    configure_logging("warning")  # JSON lines; the changes themselves are printed below
    store = open_store(settings.store)
    window = settle_timeout(settings) + SETTLE_MARGIN
    # Channel payments' records are reconciled against the channel state beside the store.
    charges = ChannelCharges(open_channel_storage(settings.store)) if wanted(settings) else None
    try:
        changed = await reconcile_recent(Reconciler(store, chain, window, 10.0, charges), limit)
    except StoreUnavailable as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        await store.close()
        if chain is not None:
            await chain.close()
        if charges is not None:
            await close_channel_storage(charges.storage)
    for old, new in changed:
        row = {"request_id": old.request_id, "payer": old.payer, "nonce": old.nonce}
        print(json.dumps({**row, "was": old.status, "now": new.status, "tx": new.transaction}))
    print(f"{len(changed)} record(s) changed", file=sys.stderr)
    return 0


async def _payments(settings: Settings, limit: int, fmt: str) -> int:
    from gateway.store import open_store

    if settings.store == "memory":
        print("error: store: memory keeps records inside the gateway process", file=sys.stderr)
        return 1
    store = open_store(settings.store)
    try:
        records = await store.recent(limit)
    except StoreUnavailable as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    if fmt == "csv":
        import csv

        fields = list(records[0].as_dict()) if records else []
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        for rec in records:
            writer.writerow(rec.as_dict())
    else:
        for rec in records:
            print(rec.dumps())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
