"""gateway.observe.logs: JSON lines on stdout for structlog and stdlib alike, secrets redacted.

Logging is process-wide configuration, so the output tests run a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime
from typing import Any

import pytest

from gateway.observe.logs import REDACTED, is_secret_name, redact
from tests.unit.serving._server_proc import ROOT

SIGNATURE = "eyJ4NDAyVmVyc2lvbiI6Mn0secretpayload"


def run_logging(body: str, level: str = "debug") -> tuple[list[dict[str, Any]], str, int]:
    code = f"from gateway.observe.logs import configure_logging\nconfigure_logging({level!r})\n"
    code += textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.splitlines()
    return [json.loads(line) for line in lines], proc.stderr, proc.returncode


def test_structlog_and_stdlib_both_print_one_json_object_per_line() -> None:
    events, stderr, code = run_logging(
        """
        import logging, warnings
        from gateway.observe.logs import get_logger
        log = get_logger("gateway.test")
        log.info("hello", n=1, text="two\\nlines")
        logging.getLogger("aiohttp.server").warning("stdlib %s", "args")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("asyncio").exception("boom")
            log.exception("struct_boom")
        warnings.warn("careful")
        """
    )
    assert code == 0 and stderr == ""
    by_event = {e["event"]: e for e in events}
    hello = by_event["hello"]
    assert hello["logger"] == "gateway.test" and hello["level"] == "info"
    assert hello["n"] == 1 and hello["text"] == "two\nlines"
    stamp = datetime.fromisoformat(hello["timestamp"].replace("Z", "+00:00"))
    offset = stamp.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    stdlib = by_event["stdlib args"]
    assert stdlib["logger"] == "aiohttp.server" and stdlib["level"] == "warning"
    assert "timestamp" in stdlib
    assert "ZeroDivisionError" in by_event["boom"]["exception"]
    assert "ZeroDivisionError" in by_event["struct_boom"]["exception"]
    assert any("careful" in e["event"] for e in events)


def test_level_filters_both_paths() -> None:
    events, _, code = run_logging(
        """
        import logging
        from gateway.observe.logs import get_logger
        get_logger("g").info("quiet")
        get_logger("g").warning("loud")
        logging.getLogger("web3").info("quiet_stdlib")
        logging.getLogger("web3").error("loud_stdlib")
        """,
        level="warning",
    )
    assert code == 0
    assert [e["event"] for e in events] == ["loud", "loud_stdlib"]


def test_unknown_level_is_refused() -> None:
    _, stderr, code = run_logging("", level="verbose")
    assert code != 0 and "unknown log level" in stderr


def test_secrets_never_reach_the_output() -> None:
    events, _, code = run_logging(
        f"""
        import logging
        from gateway.observe.logs import get_logger
        get_logger("g").info(
            "request",
            headers={{"PAYMENT-SIGNATURE": "{SIGNATURE}", "Accept": "text/html"}},
            private_key="{SIGNATURE}",
            path="/paid",
        )
        logging.getLogger("x402").info("with extra", extra={{"x_payment": "{SIGNATURE}"}})
        """
    )
    assert code == 0
    request = next(e for e in events if e["event"] == "request")
    assert request["headers"] == {"PAYMENT-SIGNATURE": REDACTED, "Accept": "text/html"}
    assert request["private_key"] == REDACTED and request["path"] == "/paid"
    extra = next(e for e in events if e["event"] == "with extra")
    assert extra["x_payment"] == REDACTED
    assert all(SIGNATURE not in json.dumps(e) for e in events)


def test_uncaught_exception_is_logged_as_json() -> None:
    events, stderr, code = run_logging("raise RuntimeError('fatal thing')")
    assert code == 1 and stderr == ""
    (event,) = events
    assert event["event"] == "uncaught_exception" and event["level"] == "critical"
    assert "RuntimeError: fatal thing" in event["exception"]


# --- redaction (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "PAYMENT-SIGNATURE",
        "payment-signature",
        "X-PAYMENT",
        "x_payment",
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "private_key",
        "api-key",
        "client_secret",
        "access_token",
        "signature",
        "password",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["PAYMENT-RESPONSE", "X-Payer", "path", "status", "network", "payer", "event"]
)
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_masks_nested_values_and_keeps_the_rest() -> None:
    original = {
        "X-PAYMENT": "abc",
        "headers": {"Authorization": "Bearer t", "Host": "h", "inner": {"token": "t"}},
        "count": 3,
    }
    assert redact(original) == {
        "X-PAYMENT": REDACTED,
        "headers": {"Authorization": REDACTED, "Host": "h", "inner": {"token": REDACTED}},
        "count": 3,
    }
    assert original["X-PAYMENT"] == "abc"  # a copy, not in place
