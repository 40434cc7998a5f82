"""What the demo prints for a person: headings, aligned fields, marks; colour on a tty only."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

_RESET = "\033[0m"
_STYLES = {
    "bold": "\033[1m",
    "dim": "\033[2m",
    "green": "\033[32m",
    "red": "\033[31m",
    "yellow": "\033[33m",
    "cyan": "\033[36m",
}
_LABEL_WIDTH = 18
_LOG_SKIP = frozenset({"timestamp", "level", "event", "logger"})


def wants_colour(stream: TextIO) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def usd(amount: int, decimals: int) -> str:
    """Atomic units as dollars, with as many places as the amount needs (at least two)."""
    whole, frac = divmod(amount, 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0").ljust(2, "0") if decimals else "00"
    return f"${whole}.{digits}"


def format_log_line(line: str) -> str | None:
    """A gateway JSON log line made short for a person; None for a line that is not JSON."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in _LOG_SKIP)
    return f"{event.get('level', '')[:4]:<4} {event.get('event', '')} {fields}".rstrip()


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def json_lines(data: Any) -> list[str]:
    """`data` as JSON, compact within each top-level value (and each item of a list)."""
    if not isinstance(data, dict) or not data:
        return [_compact(data)]
    rows = ["{"]
    for i, (key, value) in enumerate(data.items()):
        comma = "," if i < len(data) - 1 else ""
        if isinstance(value, list) and value:
            rows.append(f"  {_compact(key)}: [")
            rows += [
                f"    {_compact(v)}{',' if j < len(value) - 1 else ''}" for j, v in enumerate(value)
            ]
            rows.append(f"  ]{comma}")
        else:
            rows.append(f"  {_compact(key)}: {_compact(value)}{comma}")
    rows.append("}")
    return rows


class Printer:
    """Writes the walkthrough; every step's outcome goes through `ok` or `fail`."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if isinstance(self.stream, io.TextIOWrapper):
            # Box lines and marks must not crash the demo on a terminal that is not UTF-8.
            self.stream.reconfigure(errors="replace")
        self.colour = wants_colour(self.stream) if colour is None else colour
        self.failures: list[str] = []

    def style(self, text: str, *names: str) -> str:
        if not self.colour or not names:
            return text
        return "".join(_STYLES[n] for n in names) + text + _RESET

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def heading(self, number: int | None, title: str) -> None:
        label = f"{number}. {title}" if number is not None else title
        self.line()
        self.line(self.style(label, "bold", "cyan"))
        self.line(self.style("─" * len(label), "cyan"))

    def field(self, label: str, value: object, *styles: str) -> None:
        self.line(f"  {label + ':':<{_LABEL_WIDTH}} {self.style(str(value), *styles)}")

    def fields(self, rows: Iterable[tuple[str, object]]) -> None:
        for label, value in rows:
            self.field(label, value)

    def request(self, method: str, url: str, note: str = "") -> None:
        suffix = self.style(f"  ({note})", "dim") if note else ""
        self.line(f"  {self.style('→', 'bold')} {method} {url}{suffix}")

    def status(self, status: int, reason: str = "") -> None:
        colour = "green" if status < 400 else "yellow" if status in (402, 409) else "red"
        self.line(
            f"  {self.style('←', 'bold')} {self.style(f'{status} {reason}'.rstrip(), colour)}"
        )

    def json(self, data: Any, indent: int = 4) -> None:
        """JSON a person can scan: one line per top-level key, one per item of a list."""
        for row in json_lines(data):
            self.line(" " * indent + self.style(row, "dim"))

    def ok(self, text: str) -> None:
        self.line(f"  {self.style('✔', 'green', 'bold')} {text}")

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.line(f"  {self.style('✘', 'red', 'bold')} {self.style(text, 'red')}")

    def check(self, passed: bool, good: str, bad: str) -> bool:
        """Record one expectation of the walkthrough."""
        if passed:
            self.ok(good)
        else:
            self.fail(bad)
        return passed

    def note(self, text: str) -> None:
        self.line(f"  {self.style(text, 'dim')}")

    def command(self, text: str) -> None:
        self.line(f"    {self.style(text, 'bold')}")
