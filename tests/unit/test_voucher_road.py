"""When `handle()` gives a payment to the voucher road (gateway/voucher_road.py): only a
verified-later payment with no payment identifier, on a route settled after the origin and
not metered, on a generation whose road exists (claims and channels in memory), and only
if the road takes it; otherwise the step goes on to the full path untouched. (What the road
does with a voucher it takes: tests/unit/payment/test_voucher_road.py, tests/e2e.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from gateway.voucher_road import voucher_road


class Road:
    def __init__(self) -> None:
        self.taken: list[Any] = []

    async def take(self, matched: Any, route: Any, request_id: str) -> None:
        self.taken.append(matched)
        return None  # declined: the full path decides


def parts(road: Road | None, **route: Any) -> tuple[Any, Any]:
    on = SimpleNamespace(settle="after", metered=None, **route)
    gw = SimpleNamespace(payments=SimpleNamespace(road=road))
    return gw, SimpleNamespace(route=on, request_id="req-1", claim=None)


async def run(gw: Any, record: Any, step: Any) -> Any:
    return await voucher_road(None, gw, record, step, forward=None, started=0.0)  # type: ignore[arg-type]


async def test_a_voucher_the_road_declines_goes_on_untouched() -> None:
    road = Road()
    gw, record = parts(road)
    step = ("matched", None)
    assert await run(gw, record, step) is step
    assert road.taken == ["matched"] and record.claim is None


@pytest.mark.parametrize(
    ("why", "road", "route", "step"),
    [
        ("no road: claims or channels in Redis", None, {}, ("matched", None)),
        ("settled before the origin", Road(), {"settle": "before"}, ("matched", None)),
        ("metered", Road(), {"metered": object()}, ("matched", None)),
        ("a named payment (its kept response)", Road(), {}, ("matched", "ticket")),
        ("an answer already", Road(), {}, web.Response(status=402)),
    ],
)
async def test_what_the_road_does_not_take_is_never_offered_to_it(
    why: str, road: Road | None, route: dict[str, Any], step: Any
) -> None:
    gw, record = parts(road)
    record.route.__dict__.update(route)
    assert await run(gw, record, step) is step, why
    assert road is None or road.taken == [], why
