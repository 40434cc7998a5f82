"""Reading YAML nodes with their line numbers: values, `${ENV}` expansion, collected errors.

`Reader` walks the nodes `yaml.compose()` gives (each knows its line), so that every problem
can be reported as `file:line key.path: message`, and all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.resolver import Resolver

from gateway import formats
from gateway.config import values as cv

T = TypeVar("T")
# What a null value (`key:`) means: the default, a value the converter reads, or an error.
OnNull = Literal["default", "convert", "error"]
_MAX_DEPTH = 16


class Reader:
    """Walks YAML nodes, turning them into values and collecting every error on the way."""

    def __init__(self, filename: str, env: Mapping[str, str]) -> None:
        self.filename = filename
        self.env = env
        self._found: list[tuple[int, str]] = []
        self._constructor = SafeConstructor()
        self._resolver = Resolver()

    @property
    def errors(self) -> list[str]:
        """Every problem so far, in file order."""
        return [message for _, message in sorted(self._found, key=lambda found: found[0])]

    def error(self, node: yaml.Node, path: str, message: str) -> None:
        line = node.start_mark.line + 1
        self._found.append((line, f"{self.filename}:{line} {path}: {message}"))

    def mapping(
        self, node: yaml.Node, path: str, known: frozenset[str] | None
    ) -> dict[str, yaml.Node] | None:
        """The entries of a mapping; unknown and duplicate keys are reported and left out.

        `known=None` accepts any key (header names, `extra`).
        """
        where = path or "(top level)"
        if not isinstance(node, yaml.MappingNode):
            self.error(node, where, "must be a mapping (key: value lines)")
            return None
        first_line: dict[str, int] = {}
        entries: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                self.error(key, where, "a key must be a plain name")
                continue
            name = str(key.value)
            key_path = f"{path}.{name}" if path else name
            if name in first_line:
                self.error(key, key_path, f"duplicate key (first at line {first_line[name]})")
                continue
            first_line[name] = key.start_mark.line + 1
            if name == "<<":
                self.error(key, where, "YAML merge keys (<<) are not supported")
            elif known is not None and name not in known:
                self.error(key, key_path, "unknown key" + formats.did_you_mean(name, known))
            else:
                entries[name] = value
        return entries

    def sequence(self, node: yaml.Node, path: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, "must be a list")
            return None
        return list(node.value)

    def scalar(self, node: yaml.Node, path: str) -> Scalar | None:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, "must be a single value, not a list or mapping")
            return None
        text = str(node.value)
        tag = node.tag
        if "$" in text:
            try:
                expanded = cv.interpolate(text, self.env)
            except ValueError as exc:
                self.error(node, path, str(exc))
                return None
            # A plain (unquoted) value is typed by what it expands to: `${WORKERS:-2}` is 2.
            if expanded != text and node.style is None:
                tag = self._resolver.resolve(  # type: ignore[no-untyped-call]
                    yaml.ScalarNode, expanded, (True, False)
                )
            text = expanded
        try:
            value = self._constructor.construct_object(yaml.ScalarNode(tag, text))
        except ConstructorError as exc:
            self.error(node, path, f"cannot read this value ({exc.problem})")
            return None
        return Scalar(text, value)

    def value(
        self,
        node: yaml.Node,
        path: str,
        convert: Callable[[Scalar], T],
        default: T,
        *,
        on_null: OnNull = "default",
    ) -> T:
        """`convert` the scalar at `node`; `default` when it is bad, or null (`key:` or an
        empty `${VAR:-}`) and `on_null` says so: "default" (the default), "convert" (the
        converter reads the null itself), "error" (a value is required)."""
        scalar = self.scalar(node, path)
        if scalar is not None and scalar.value is None and on_null == "error":
            self.error(node, path, "is empty; a value is required")
            return default
        if scalar is None or (scalar.value is None and on_null != "convert"):
            return default
        try:
            return convert(scalar)
        except ValueError as exc:
            self.error(node, path, str(exc))
            return default

    def section(self, node: yaml.Node, path: str, known: frozenset[str] | None) -> Section | None:
        """The mapping at `node` as a `Section`, or None (reported) when it is not one."""
        entries = self.mapping(node, path, known)
        return None if entries is None else Section(self, node, path, entries)

    @property
    def error_count(self) -> int:
        return len(self._found)

    def plain(self, node: yaml.Node, path: str, depth: int = 0) -> Any:
        """Any YAML value as plain Python data (for `extra`), with `${ENV}` expanded."""
        if depth > _MAX_DEPTH:
            # Also stops a recursive alias (`a: &x [*x]`), which compose() allows.
            self.error(node, path, f"nested more than {_MAX_DEPTH} levels deep")
            return None
        if isinstance(node, yaml.MappingNode):
            entries = self.mapping(node, path, None) or {}
            return {k: self.plain(v, f"{path}.{k}", depth + 1) for k, v in entries.items()}
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node.value)]
        scalar = self.scalar(node, path)
        return scalar.value if scalar is not None else None


class Section:
    """One mapping of the file: its entries, read against its key path (`routes[2]`)."""

    __slots__ = ("entries", "node", "path", "reader")

    def __init__(
        self, reader: Reader, node: yaml.Node, path: str, entries: dict[str, yaml.Node]
    ) -> None:
        self.reader = reader
        self.node = node
        self.path = path
        self.entries = entries

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> yaml.Node | None:
        return self.entries.get(key)

    def where(self, key: str) -> str:
        """The key path of `key` in this section."""
        return f"{self.path}.{key}" if self.path else key

    def read(
        self, key: str, convert: Callable[[Scalar], T], default: T, *, on_null: OnNull = "default"
    ) -> T:
        """`Reader.value()` of the entry `key`, or `default` when the key is absent."""
        node = self.entries.get(key)
        if node is None:
            return default
        return self.reader.value(node, self.where(key), convert, default, on_null=on_null)

    def require(self, keys: tuple[str, ...], message: str = "required") -> None:
        """Report each of `keys` that is absent, at this mapping's line."""
        for key in keys:
            if key not in self.entries:
                self.reader.error(self.node, self.where(key), message)

    def error(self, key: str, message: str) -> None:
        """Report a problem with entry `key` (at its line; the mapping's when it is absent)."""
        self.reader.error(self.entries.get(key, self.node), self.where(key), message)


# --- typed readers of one YAML scalar -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scalar:
    """One scalar value: its text after `${ENV}` expansion, and that text read as YAML."""

    text: str
    value: Any  # str, int, float, bool or None


def text(scalar: Scalar) -> str:
    return scalar.text


def nonempty(scalar: Scalar) -> str:
    if not scalar.text.strip():
        raise ValueError("must not be empty")
    return scalar.text


def boolean(scalar: Scalar) -> bool:
    if not isinstance(scalar.value, bool):
        raise ValueError(f"{formats.quote(scalar.text)} is not true or false")
    return scalar.value


def positive_int(scalar: Scalar) -> int:
    if isinstance(scalar.value, bool) or not isinstance(scalar.value, int):
        raise ValueError(f"{formats.quote(scalar.text)} is not a whole number")
    if scalar.value < 1:
        raise ValueError(f"{scalar.value} must be 1 or more")
    return scalar.value


def duration(scalar: Scalar) -> float:
    return formats.parse_duration(scalar.text)


def choice(options: tuple[str, ...]) -> Callable[[Scalar], str]:
    """One of `options`, case-insensitively."""

    def convert(scalar: Scalar) -> str:
        word = scalar.text.strip().lower()
        if word not in options:
            hint = formats.did_you_mean(word, options)
            raise ValueError(f"{formats.quote(scalar.text)} is not allowed{hint}")
        return word

    return convert


def using(parse: Callable[[str], T]) -> Callable[[Scalar], T]:
    """A text parser as a scalar reader."""
    return lambda scalar: parse(scalar.text)
