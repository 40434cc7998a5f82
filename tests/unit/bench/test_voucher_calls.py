"""bench.voucher_calls: the count that splits a profile's calls into Python and C."""

from __future__ import annotations

import cProfile
import pstats

from bench.voucher_calls import Calls, calls_per_request


def _twice(values: list[int]) -> int:
    return len(values) + _inner(values)


def _inner(values: list[int]) -> int:
    return sum(values) + max(values)


def test_python_and_c_calls_per_request() -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(4):
        _twice([1, 2, 3])
    prof.disable()
    calls = calls_per_request(pstats.Stats(prof), 4)
    # per request: _twice and _inner in Python; len, sum, max in C (+ the profiler's own
    # `disable`, once in all, a quarter per request)
    assert calls.python == 2
    assert calls.c == 3.25
    assert calls.total == 5.25


def test_over_free_is_per_kind() -> None:
    over = Calls(python=430.0, c=300.0).minus(Calls(python=290.0, c=150.0))
    assert over == Calls(python=140.0, c=150.0)
