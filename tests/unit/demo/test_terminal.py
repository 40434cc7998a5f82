"""What the demo prints: dollar amounts, aligned fields, colour only when asked."""

from __future__ import annotations

import io
import json

import pytest

from gateway.demo.terminal import Printer, format_log_line, json_lines, usd, wants_colour


@pytest.mark.parametrize(
    ("amount", "decimals", "text"),
    [
        (10_000, 6, "$0.01"),
        (1_000, 6, "$0.001"),
        (10_000_000, 6, "$10.00"),
        (9_990_000, 6, "$9.99"),
        (1, 6, "$0.000001"),
        (0, 6, "$0.00"),
        (5, 0, "$5.00"),
    ],
)
def test_usd(amount: int, decimals: int, text: str) -> None:
    assert usd(amount, decimals) == text


def test_no_colour_for_a_pipe() -> None:
    out = io.StringIO()
    printer = Printer(out)
    assert not printer.colour
    printer.heading(1, "Title")
    printer.ok("fine")
    assert "\033[" not in out.getvalue()


def test_no_colour_when_no_color_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_colour(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_colour(Tty())


def test_fields_are_aligned() -> None:
    out = io.StringIO()
    Printer(out, colour=False).fields([("price", "$0.01"), ("network", "eip155:84532")])
    first, second = out.getvalue().splitlines()
    assert first.index("$0.01") == second.index("eip155:84532")


def test_check_records_failures() -> None:
    printer = Printer(io.StringIO(), colour=False)
    assert printer.check(True, "good", "bad")
    assert not printer.check(False, "good", "bad")
    assert printer.failures == ["bad"]


def test_colour_wraps_and_resets() -> None:
    assert Printer(io.StringIO(), colour=True).style("x", "red").endswith("\033[0m")


def test_log_line_is_shortened() -> None:
    line = '{"timestamp":"t","level":"info","event":"request","method":"GET","status":402}'
    assert format_log_line(line) == "info request method=GET status=402"
    assert format_log_line("Traceback (most recent call last):") is None
    assert format_log_line("[1, 2]") is None


def test_json_lines_are_valid_json_and_compact() -> None:
    data = {"city": "Lisbon", "forecast": [{"day": "Mon", "low_c": 5}, {"day": "Tue"}], "x": None}
    rows = json_lines(data)
    assert json.loads("\n".join(rows)) == data
    assert rows[3] == '    {"day": "Mon", "low_c": 5},'
    assert len(rows) == 8
    assert json_lines("plain text") == ['"plain text"']
    assert json.loads("\n".join(json_lines({"empty": []}))) == {"empty": []}
