"""The config file, YAML to frozen `Settings`: read once at start-up (and on a reload), never
on the request path. Every problem is reported at once, each as `file:line key.path: message`.

The file is composed into YAML nodes (which carry line numbers) and walked by hand
(`reader.Reader`), so every problem can name its line and key path. `${ENV}` references in
values are expanded before a value is read as its type. The top-level keys are compiled in
`document`, the `routes:` table in `routes`, scalar values by `values` and `gateway.formats`.

Public face: `load(path)`, `loads(text)`. The settings types live in `gateway.config.settings`,
the one part of this package the request path imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import yaml

from gateway.config.document import compile_document
from gateway.config.reader import Reader
from gateway.config.settings import Settings
from gateway.errors import ConfigError

__all__ = ["load", "loads"]


def _compose(text: str, filename: str) -> yaml.Node:
    """The document's node tree; `ConfigError` for a syntax error or an empty file."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        # Our own words, not str(exc): PyYAML quotes the offending line, which may hold a secret.
        problem = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{filename}:{line}: YAML syntax error: {problem}"]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise ConfigError(
            [f"{filename}:{line}: YAML syntax error: a control character is not allowed here"]
        ) from None
    if root is None:
        raise ConfigError([f"{filename}:1: the file is empty; upstream and routes are required"])
    return root


def loads(text: str, filename: str = "<string>", env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate a config given as text; raises ConfigError with every problem."""
    reader = Reader(filename, os.environ if env is None else env)
    settings = compile_document(reader, _compose(text, filename))
    if reader.errors or settings is None:
        raise ConfigError(reader.errors)
    return settings


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the config file at `path`."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            content = f.read()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read the config file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: the config file is not UTF-8 text"]) from None
    return loads(content, name, env)
