"""The editor schema, the example config and the loader agree with each other."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config
from gateway.config import (
    channels,
    cors,
    discovery,
    document,
    dynamic,
    facilitators,
    mcp,
    metered,
    networks,
    rates,
)
from gateway.config import routes as config_routes
from gateway.errors import ConfigError

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = ROOT / "config" / "gateway.schema.json"
EXAMPLE_PATH = ROOT / "config" / "gateway.example.yaml"
DEMO_PATH = ROOT / "config" / "demo.yaml"

# Where in the schema each of the loader's key sets is described.
SECTIONS: dict[str, frozenset[str]] = {
    "": document.TOP_LEVEL_KEYS,
    "properties.timeouts": document.TIMEOUT_KEYS,
    "properties.limits": document.LIMIT_KEYS,
    "properties.idempotency": document.IDEMPOTENCY_KEYS,
    "properties.cors": cors.CORS_KEYS,
    "$defs.asset": document.ASSET_KEYS,
    "$defs.facilitator": facilitators.FACILITATOR_KEYS,
    "$defs.facilitator.properties.local": facilitators.LOCAL_FACILITATOR_KEYS,
    "$defs.route": config_routes.ROUTE_KEYS,
    "$defs.accept": config_routes.ACCEPT_KEYS,
    "$defs.meteredPrice": metered.UPTO_KEYS,
    "$defs.route.properties.stream_usage": metered.STREAM_USAGE_KEYS,
    "$defs.route.properties.access": config_routes.ACCESS_KEYS,
    "properties.channels": channels.CHANNELS_KEYS,
    "$defs.route.properties.channel": channels.CHANNEL_KEYS,
    "$defs.network_rpc": networks.NETWORK_KEYS,
    "$defs.routeLimits": rates.ROUTE_LIMIT_KEYS,
    "$defs.discovery": discovery.DISCOVERY_KEYS,
    "$defs.priceHook": dynamic.HOOK_KEYS,
    "$defs.mcp": mcp.MCP_KEYS,
    "$defs.discoveryInput": discovery.DISCOVERY_INPUT_KEYS,
    "$defs.discoveryOutput": discovery.DISCOVERY_OUTPUT_KEYS,
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def _at(schema: dict[str, Any], where: str) -> dict[str, Any]:
    node = schema
    for part in where.split(".") if where else []:
        node = node[part]
    return node


def _objects(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object that lists `properties`, with where it sits."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            yield where, node
        for key, value in node.items():
            if key != "properties" or not isinstance(value, dict):
                yield from _objects(value, f"{where}.{key}" if where else key)
            else:
                for name, sub in value.items():
                    yield from _objects(
                        sub, f"{where}.properties.{name}" if where else f"properties.{name}"
                    )
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{where}[{i}]")


def test_schema_is_valid_draft_2020_12(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("where", list(SECTIONS))
def test_schema_properties_match_the_loaders_keys(schema: dict[str, Any], where: str) -> None:
    section = _at(schema, where)
    assert set(section["properties"]) == set(SECTIONS[where])
    assert section.get("additionalProperties") is False


def test_every_schema_object_is_one_the_loader_knows(schema: dict[str, Any]) -> None:
    # Free-form mappings (headers, extra) have no `properties`; every other object must be
    # one of the sections compared above, so no key can hide in an unchecked corner.
    assert {where for where, _ in _objects(schema)} == set(SECTIONS)


def test_schema_enums_match_the_loader(schema: dict[str, Any]) -> None:
    route = schema["$defs"]["route"]["properties"]
    accept = schema["$defs"]["accept"]["properties"]
    assert tuple(route["settle"]["enum"]) == config_routes.SETTLE_MODES
    assert tuple(accept["scheme"]["enum"]) == config_routes.SCHEMES
    log_level = schema["properties"]["log_level"]["anyOf"][0]["enum"]
    assert tuple(log_level) == document.LOG_LEVELS
    assert set(schema["required"]) == {"upstream", "routes"}


def _validator(schema: dict[str, Any]) -> Any:
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", [EXAMPLE_PATH, DEMO_PATH], ids=lambda p: p.name)
def test_shipped_configs_validate_against_the_schema(schema: dict[str, Any], path: Path) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    problems = [f"{list(e.path)}: {e.message}" for e in _validator(schema).iter_errors(document)]
    assert problems == []


def test_example_loads_with_only_its_defaults() -> None:
    settings = config.load(EXAMPLE_PATH, env={})
    assert settings.routes and not all(r.free for r in settings.routes)
    assert settings.facilitators


def test_example_mentions_every_key() -> None:
    text = EXAMPLE_PATH.read_text(encoding="utf-8")
    every = set().union(*SECTIONS.values())
    missing = sorted(
        k for k in every if not re.search(rf"(^|[\s{{,#-]){re.escape(k)}:", text, re.M)
    )
    assert missing == []


def test_example_gives_every_variable_a_default() -> None:
    text = EXAMPLE_PATH.read_text(encoding="utf-8")
    uncommented = "\n".join(
        line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#")
    )
    references = re.findall(r"\$\{([^}]*)\}", uncommented)
    assert references
    assert [r for r in references if ":-" not in r] == []


MINIMAL = {
    "upstream": "http://127.0.0.1:8080",
    "routes": [{"path": "/", "price": "free"}],
}


@pytest.mark.parametrize(
    "change",
    [
        {"timeouts": {"conect": "1s"}},
        {"routs": []},
        {"routes": [{"path": "/a", "price": "free", "prize": 1}]},
        {"routes": [{"path": "/a", "accepts": [{"amount": 1, "pay": "x"}]}]},
        {"facilitator": {"url": "http://f", "local": {"rpc_url": "http://n", "private_key": "k"}}},
        {"facilitator": {"local": {"rpc_url": "http://n", "private_key": "0x" + "a" * 64, "x": 1}}},
        {"asset": {"address": "0x" + "1" * 40, "name": "T", "version": "1"}},
        {"limits": {"request_body": "lots"}},
        {"limits": {"per_payer": "ten a second"}},
        {"routes": [{"path": "/a", "price": {"hook": "http://h/", "cahce": "1s"}}]},
        {"routes": [{"path": "/a", "price": "free", "discovery": {"input": {"query": {"q": 1}}}}]},
        {"routes": [{"path": "/a", "price": "free", "limits": {"per_ip": "1/s", "x": 1}}]},
        {"log_level": "verbose"},
        {"routes": [{"path": "/a", "price": "free", "settle": "later"}]},
        {"routes": []},
        {"routes": [{"path": "/a"}]},
        {"routes": [{"path": "/a", "price": "0.001$"}]},
    ],
    ids=lambda c: json.dumps(c)[:50],
)
def test_schema_and_loader_both_reject(schema: dict[str, Any], change: dict[str, Any]) -> None:
    document = {**MINIMAL, **change}
    assert list(_validator(schema).iter_errors(document)), "the schema accepted it"
    with pytest.raises(ConfigError):
        config.loads(yaml.safe_dump(document), env={})


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"admin": None, "listen": "[::1]:8000", "workers": "${WORKERS:-1}"},
        {"admin": "off", "limits": {"request_body": None, "header_size": "16KiB"}},
        {"timeouts": {"connect": 1.5, "read": "1m30s", "shutdown_grace": 0}},
        {"network": "base", "routes": [{"path": "/a/*", "methods": ["GET"], "price": "$0.5"}]},
        {"facilitator": [{"url": "http://f", "headers": {"A": "b"}, "timeout": "2s"}]},
    ],
    ids=lambda c: json.dumps(c)[:50],
)
def test_schema_and_loader_both_accept(schema: dict[str, Any], change: dict[str, Any]) -> None:
    document = {
        **MINIMAL,
        "pay_to": "0x209693bc6afc0c5328ba36faf03c514ef312287c",
        "facilitator": {"url": "http://f"},
        **change,
    }
    assert [e.message for e in _validator(schema).iter_errors(document)] == []
    config.loads(yaml.safe_dump(document), env={})
