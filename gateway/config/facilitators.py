"""`facilitator:` of the config file: one remote facilitator (`url`), an in-process one
(`local`), or a list of them tried in order."""

from __future__ import annotations

from types import MappingProxyType

import yaml

from gateway import formats
from gateway.config import values as cv
from gateway.config.reader import Reader, Section, duration, using
from gateway.config.settings import (
    FacilitatorSettings,
    LocalFacilitatorSettings,
    RemoteFacilitatorSettings,
)

FACILITATOR_KEYS = frozenset({"url", "headers", "timeout", "local"})
LOCAL_FACILITATOR_KEYS = frozenset({"rpc_url", "private_key"})


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
    local.require(("rpc_url", "private_key"))
    # An RPC URL often embeds an API key: it is never echoed.
    rpc_url = using(lambda text: cv.parse_url(text, allow_path=True, what="RPC URL", echo=False))
    rpc = local.read("rpc_url", rpc_url, None, on_null="error")
    secret = local.read("private_key", using(cv.parse_private_key), None, on_null="error")
    if rpc is None or secret is None:
        return None
    return LocalFacilitatorSettings(rpc_url=rpc, private_key=secret, timeout=timeout)
