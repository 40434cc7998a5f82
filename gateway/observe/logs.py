"""Structured logs: one JSON object per line on stdout, from structlog and stdlib alike.

The gateway's own events go through structlog's native path (a filtering bound logger
writing straight to stdout: no stdlib `logging` round trip), because the access line runs
on every request. Records from libraries (aiohttp, asyncio, web3, x402) reach the root
stdlib logger and are rendered by the same processors, so the output is uniform.

Every event passes a redaction step: a key that names a payment header or a secret has
its value replaced, also inside nested mappings (`headers={...}`), so a careless
`log.info(..., headers=dict(request.headers))` cannot leak a signed payment.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"

# Whole names (case-insensitive) whose values are secret or are a payment in themselves.
_SECRET_NAMES = frozenset(
    {
        "payment-signature",
        "x-payment",
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "password",
        "passwd",
    }
)
# Parts of names that mark a secret: private_key, api-key, client_secret, access_token...
_SECRET_PARTS = ("key", "secret", "token", "signature", "password", "credential")

# Values that cannot hold a mapping: skips the (slow) ABC isinstance check for them.
_SCALARS = frozenset({str, int, float, bool, type(None)})

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


@functools.lru_cache(maxsize=1024)
def is_secret_name(name: str) -> bool:
    """Whether a field or header called `name` must never be logged as is."""
    lowered = name.lower().replace("_", "-")
    return lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS)


def redact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `mapping` with secret values replaced by `[redacted]`, nested mappings too."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str) and is_secret_name(key):
            out[key] = REDACTED
        elif isinstance(value, Mapping):
            out[key] = redact(value)
        else:
            out[key] = value
    return out


def _redact_event(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    # Fast path: one cached lookup per key, a copy only when something must go.
    for key, value in event.items():
        if is_secret_name(key) or (type(value) not in _SCALARS and isinstance(value, Mapping)):
            return redact(event)
    return event


def _logger_field(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    # `logger` cannot be passed to structlog.get_logger() (it is a parameter name there).
    name = event.pop("logger_name", None)
    if name is not None:
        event["logger"] = name
    return event


def _json_default(value: object) -> str:
    return str(value)


# Built once: json.dumps() with options builds a new encoder per call, which costs more
# than the encoding itself on a short access line. The encoder holds no per-call state.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default, ensure_ascii=False)


def _dumps(obj: Any, **_kw: Any) -> str:
    return _ENCODER.encode(obj)


def _level_number(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}") from None


def configure_logging(level: str = "info") -> None:
    """Route every log of the process to stdout as JSON lines at `level` and above."""
    number = _level_number(level)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _logger_field,
            structlog.processors.add_log_level,
            timestamper,
            _redact_event,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    foreign: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        timestamper,
    ]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _redact_event,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    get_logger("gateway").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def get_logger(name: str) -> Any:
    """A structlog logger whose events carry `logger=name`."""
    return structlog.get_logger(logger_name=name)
