"""gateway/paid.py's header pieces held to what the payer saw before they were made cheaper:
the Server-Timing header, byte for byte."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import paid
from gateway.payment.paid_claim import StepTimings

_SECONDS = st.none() | st.floats(min_value=0, max_value=100, allow_nan=False)


def _as_it_was(timings: StepTimings, total: float) -> str:
    """The header as `timing()` wrote it first: the steps reached, then gw and total."""
    named = (("verify", timings.verify), ("origin", timings.origin), ("settle", timings.settle))
    steps = {name: seconds for name, seconds in named if seconds is not None}
    spans = {**steps, "gw": total - sum(steps.values()), "total": total}
    return ", ".join(f"{k};dur={v * 1000:.3f}" for k, v in spans.items())


@settings(max_examples=300, deadline=None)
@given(_SECONDS, _SECONDS, _SECONDS, st.floats(min_value=0, max_value=1000, allow_nan=False))
def test_server_timing_is_the_same_header(
    verify: float | None, origin: float | None, settle: float | None, total: float
) -> None:
    timings = StepTimings(verify=verify, settle=settle, origin=origin)
    gw: Any = SimpleNamespace(settings=SimpleNamespace(server_timing=True))
    claim: Any = SimpleNamespace(timings=timings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paid.time, "perf_counter", lambda: 5000.0 + total)
        header = paid.timing(gw, claim, 5000.0)
    assert header == {"Server-Timing": _as_it_was(timings, 5000.0 + total - 5000.0)}


def test_server_timing_off_is_no_header() -> None:
    gw: Any = SimpleNamespace(settings=SimpleNamespace(server_timing=False))
    assert paid.timing(gw, SimpleNamespace(timings=StepTimings(verify=1.0)), 0.0) == {}
