"""`facilitator:` of the config file: one remote facilitator (`url`), an in-process one
(`local`), or a list of them tried in order."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import yaml

from gateway import formats
from gateway.config import values as cv
from gateway.config.reader import Reader, Section, duration, positive_int, using
from gateway.config.settings import (
    FacilitatorSettings,
    LocalFacilitatorSettings,
    RemoteFacilitatorSettings,
)

FACILITATOR_KEYS = frozenset({"url", "headers", "timeout", "local"})
LOCAL_FACILITATOR_KEYS = frozenset(
    {
        "rpc_url",
        "private_key",
        "keys",
        "delegate_key",
        "batch_window",
        "max_batch",
        "confirmation_timeout",
        "poll_interval",
        "min_gas_balance",
        "max_fee_per_gas",
        "reorg_depth",
        "stuck_blocks",
        "stuck_seconds",
    }
)


def compile_facilitators(reader: Reader, node: yaml.Node | None) -> tuple[FacilitatorSettings, ...]:
    if node is None:
        return ()
    if isinstance(node, yaml.SequenceNode):
        if not node.value:
            reader.error(node, "facilitator", "is an empty list")
        found = [
            _facilitator(reader, item, f"facilitator[{index}]")
            for index, item in enumerate(node.value)
        ]
    else:
        found = [_facilitator(reader, node, "facilitator")]
    return tuple(f for f in found if f is not None)


def _facilitator(reader: Reader, node: yaml.Node, path: str) -> FacilitatorSettings | None:
    entry = reader.section(node, path, FACILITATOR_KEYS)
    if entry is None:
        return None
    if ("url" in entry) == ("local" in entry):
        reader.error(node, path, "give either url (a remote facilitator) or local (in-process)")
        return None
    if "local" in entry:
        return _local_facilitator(reader, entry)
    return _remote_facilitator(reader, entry)


def _remote_facilitator(reader: Reader, entry: Section) -> RemoteFacilitatorSettings | None:
    url = entry.read("url", using(cv.parse_http_url), None, on_null="error")
    timeout = entry.read("timeout", duration, 10.0)
    headers_node = entry.get("headers")
    headers = {} if headers_node is None else _headers(reader, headers_node, entry.where("headers"))
    if url is None:
        return None
    return RemoteFacilitatorSettings(url=url, headers=MappingProxyType(headers), timeout=timeout)


def _headers(reader: Reader, node: yaml.Node, path: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in (reader.mapping(node, path, None) or {}).items():
        try:
            formats.parse_token(name, "header name")
        except ValueError as exc:
            reader.error(value, f"{path}.{name}", str(exc))
            continue
        got = reader.value(value, f"{path}.{name}", using(cv.parse_header_value), None)
        if got is not None:
            headers[name] = got
    return headers


def _local_facilitator(reader: Reader, entry: Section) -> LocalFacilitatorSettings | None:
    if "headers" in entry:
        entry.error("headers", "only for a remote facilitator (url)")
    timeout = entry.read("timeout", duration, 30.0)
    local = reader.section(entry.entries["local"], entry.where("local"), LOCAL_FACILITATOR_KEYS)
    if local is None:
        return None
    local.require(("rpc_url",))
    # An RPC URL often embeds an API key: it is never echoed.
    rpc_url = using(lambda text: cv.parse_url(text, allow_path=True, what="RPC URL", echo=False))
    rpc = local.read("rpc_url", rpc_url, None, on_null="error")
    keys = _settler_keys(reader, local)
    delegate = local.read("delegate_key", using(cv.parse_private_key), None, on_null="error")
    if delegate is not None and delegate in keys:
        local.error(
            "delegate_key", "must differ from the settler keys (each key has one nonce manager)"
        )
    if rpc is None or not keys:
        return None
    return LocalFacilitatorSettings(
        rpc_url=rpc,
        private_key=keys[0],
        timeout=local.read("confirmation_timeout", duration, timeout),
        more_keys=keys[1:],
        delegate_key=delegate,
        **_engine_knobs(local),
    )


def _settler_keys(reader: Reader, local: Section) -> tuple[str, ...]:
    """`private_key` and `keys`, in that order; each given once."""
    if "private_key" not in local and "keys" not in local:
        local.error("private_key", "required (or keys: a list of settler keys)")
    found: list[str] = []
    first = local.read("private_key", using(cv.parse_private_key), None, on_null="error")
    if first is not None:
        found.append(first)
    node = local.get("keys")
    for index, item in enumerate(reader.sequence(node, local.where("keys")) or [] if node else []):
        where = f"{local.where('keys')}[{index}]"
        key = reader.value(item, where, using(cv.parse_private_key), None, on_null="error")
        if key is not None and key in found:
            reader.error(item, where, "the same key twice would race on its own nonces")
        elif key is not None:
            found.append(key)
    return tuple(found)


def _engine_knobs(local: Section) -> dict[str, Any]:
    zero_ok = using(lambda text: formats.parse_duration(text, allow_zero=True))
    return {
        "batch_window": local.read("batch_window", zero_ok, 0.0),
        "max_batch": local.read("max_batch", positive_int, 50),
        "poll_interval": local.read("poll_interval", duration, 0.25),
        "min_gas_balance": local.read("min_gas_balance", using(parse_wei), 0),
        "max_fee_per_gas": local.read("max_fee_per_gas", using(parse_wei), 500 * 10**9),
        "reorg_depth": local.read("reorg_depth", positive_int, 6),
        "stuck_blocks": local.read("stuck_blocks", positive_int, 3),
        "stuck_seconds": local.read("stuck_seconds", duration, 30.0),
    }


_WEI_UNITS = {"wei": 1, "gwei": 10**9, "eth": 10**18}


def parse_wei(text: str) -> int:
    """`1000000`, `50 gwei`, `0.01 eth`: an amount of the chain's native token, in wei."""
    number, _, unit = text.strip().lower().partition(" ")
    scale = _WEI_UNITS.get(unit.strip() or "wei")
    try:
        amount = Decimal(number) * scale if scale is not None else None
    except InvalidOperation:
        amount = None
    if amount is None or amount < 0 or amount != amount.to_integral_value():
        raise ValueError(
            f"{formats.quote(text)} is not an amount of wei (write e.g. 1000000, 50 gwei, 0.01 eth)"
        )
    return int(amount)
