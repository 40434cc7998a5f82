"""A route's `discovery:`: how to call it, for catalogues and agents.

discovery:
  input:
    query: {symbol: string}          # parameter -> JSON type, or a JSON Schema of its own
    # body: {text: string}           # a request body's fields instead (POST, PUT, PATCH)
    # body_type: json                # json | form-data | text
    required: [symbol]               # default: none
    example: {symbol: ETH}
  output: {example: {price: 1.0}, schema: {properties: {price: {type: number}}}}
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Literal

import yaml

from gateway.config.reader import Reader, Section, choice
from gateway.config.settings import Discovery

DISCOVERY_KEYS = frozenset({"input", "output"})
DISCOVERY_INPUT_KEYS = frozenset({"query", "body", "body_type", "required", "example"})
DISCOVERY_OUTPUT_KEYS = frozenset({"example", "schema"})
JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array")
BODY_TYPES = ("json", "form-data", "text")


def compile_discovery(reader: Reader, node: yaml.Node | None, path: str) -> Discovery | None:
    if node is None:
        return None
    section = reader.section(node, path, DISCOVERY_KEYS)
    if section is None:
        return None
    found = Discovery()
    if (given := section.get("input")) is not None:
        found = _input(reader, given, section.where("input")) or found
    if (given := section.get("output")) is not None:
        out = reader.section(given, section.where("output"), DISCOVERY_OUTPUT_KEYS)
        if out is not None:
            example = out.get("example")
            schema = _mapping(reader, out, "schema")
            return Discovery(
                found.input_in,
                found.properties,
                found.required,
                found.example,
                found.body_type,
                reader.plain(example, out.where("example")) if example is not None else None,
                schema,
            )
    return found


def _input(reader: Reader, node: yaml.Node, path: str) -> Discovery | None:
    section = reader.section(node, path, DISCOVERY_INPUT_KEYS)
    if section is None:
        return None
    if "query" in section and "body" in section:
        section.error("body", "give query or body, not both")
        return None
    where: Literal["query", "body"] = "body" if "body" in section else "query"
    properties = _properties(reader, section, where)
    body_type = section.read("body_type", choice(BODY_TYPES), "json")
    required = _required(reader, section, properties)
    return Discovery(
        input_in=where,
        properties=properties,
        required=required,
        example=_mapping(reader, section, "example"),
        body_type="text" if body_type == "text" else "form-data" if body_type != "json" else "json",
    )


def _mapping(reader: Reader, section: Section, key: str) -> MappingProxyType[str, Any] | None:
    node = section.get(key)
    if node is None:
        return None
    value = reader.plain(node, section.where(key))
    if not isinstance(value, dict):
        section.error(key, "must be a mapping")
        return None
    return MappingProxyType(value)


def _properties(reader: Reader, section: Section, key: str) -> MappingProxyType[str, Any]:
    given = _mapping(reader, section, key)
    out: dict[str, Any] = {}
    for name, kind in (given or {}).items():
        if isinstance(kind, dict):
            out[name] = kind  # a JSON Schema of its own
        elif kind in JSON_TYPES:
            out[name] = {"type": kind}
        else:
            section.error(key, f"{name}: {kind!r} is not one of {', '.join(JSON_TYPES)}")
    return MappingProxyType(out)


def _required(reader: Reader, section: Section, properties: Any) -> tuple[str, ...]:
    node = section.get("required")
    if node is None:
        return ()
    value = reader.plain(node, section.where("required"))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        section.error("required", "must be a list of parameter names")
        return ()
    unknown = [v for v in value if v not in properties]
    if unknown:
        section.error("required", f"{', '.join(unknown)} not declared in the input")
    return tuple(value)
