"""`python -m bench.voucher_steps`: a channel voucher's in-process steps, µs of CPU each
(issue 14's repeat-call target): what a voucher costs the gateway that is not HTTP.

No sockets: vouchers on one channel (tests/unit/payment helpers: the SDK's memory channel
storage, the fast voucher path's writer, a memory store) go through the request path's
steps in order, as `gateway/app.py` runs them: decode the header, match it (the channel id
from the generation's cache), claim, verify (the fast path: signature, reservation), settle
(the charge and the payment records), the PAYMENT-RESPONSE header, release of the claim
block. Each step is timed with `time.process_time_ns()`; the median per step over
`--calls` vouchers is printed and written to bench/results/voucher-steps.md.

`--road`: the voucher road's steps instead (gateway/voucher_road.py, what `handle()` runs
for such a voucher on a memory gateway): decode, match, take (signature, claim,
reservation), settle (the charge in place, the record), receipt; on the gateway's own
memory channel state (`MemoryChannels`); written to bench/results/voucher-steps-road.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from x402.mechanisms.evm.batch_settlement.server.storage import InMemoryChannelStorage

from gateway.payment import decode_payment, match_requirement
from gateway.payment.receipts import receipt_headers
from gateway.store.channel_memory import MemoryChannels
from tests.unit.payment.test_channel_fast import payments
from tests.unit.payment.test_channel_terms import voucher_payload
from tests.unit.payment.test_channels import BATCH, CONFIG, PRICE, PRICED, URL, accepted, seed
from tests.unit.wire_helpers import b64json, headers

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("decode", "match", "claim", "verify", "settle", "receipt", "release")
ROAD_STEPS = ("decode", "match", "take", "settle", "receipt")


def voucher_headers(n: int) -> list[Any]:
    """`n` vouchers on the test channel, cumulative 2..n+1 prices (signed before the clock)."""
    out = []
    for k in range(2, n + 2):
        data = {
            "x402Version": 2,
            "accepted": accepted(BATCH),
            "payload": voucher_payload(k * PRICE, CONFIG),
            "resource": {"url": URL},
        }
        out.append(headers(("PAYMENT-SIGNATURE", b64json(data))))
    return out


async def run(calls: int) -> dict[str, list[float]]:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    took: dict[str, list[float]] = {step: [] for step in STEPS}
    for k, sent in enumerate(voucher_headers(calls)):
        marks = [time.process_time_ns()]
        decoded = decode_payment(sent, 16384)
        assert decoded is not None
        marks.append(time.process_time_ns())
        matched = match_requirement(PRICED, decoded, URL, p.channel_ids)
        marks.append(time.process_time_ns())
        block = p.claimed(matched, PRICED, f"req-{k}")
        claim = await block.__aenter__()
        marks.append(time.process_time_ns())
        await p.verify(claim)
        marks.append(time.process_time_ns())
        settled = await p.settle(claim)
        marks.append(time.process_time_ns())
        receipt_headers(settled, 2)
        marks.append(time.process_time_ns())
        await block.__aexit__(None, None, None)
        marks.append(time.process_time_ns())
        for step, start, end in zip(STEPS, marks[:-1], marks[1:], strict=True):
            took[step].append((end - start) / 1000)
    await p.close()
    return took


async def run_road(calls: int) -> dict[str, list[float]]:
    storage = MemoryChannels()
    seed(storage, charged=PRICE)  # type: ignore[arg-type]  # the same storage contract
    p, _ = await payments(storage)  # type: ignore[arg-type]
    road = p.road
    assert road is not None
    took: dict[str, list[float]] = {step: [] for step in ROAD_STEPS}
    for k, sent in enumerate(voucher_headers(calls)):
        marks = [time.process_time_ns()]
        decoded = decode_payment(sent, 16384)
        assert decoded is not None
        marks.append(time.process_time_ns())
        matched = match_requirement(PRICED, decoded, URL, p.channel_ids)
        marks.append(time.process_time_ns())
        claim = await road.take(matched, PRICED, f"req-{k}")
        assert claim is not None, "the road declined a plain voucher"
        marks.append(time.process_time_ns())
        settled = await road.settle(claim)
        marks.append(time.process_time_ns())
        receipt_headers(settled, 2)
        marks.append(time.process_time_ns())
        for step, start, end in zip(ROAD_STEPS, marks[:-1], marks[1:], strict=True):
            took[step].append((end - start) / 1000)
    await p.close()
    return took


def markdown(took: dict[str, list[float]], calls: int, road: bool = False) -> str:
    lines = [
        "# A channel voucher's in-process steps, µs CPU per voucher",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC · `python -m bench.voucher_steps --calls {calls}"
        + (" --road`: the voucher road" if road else "`"),
        "",
        "| step | median | p90 |",
        "| --- | --- | --- |",
    ]
    total = 0.0
    for step, values in took.items():
        mid = statistics.median(values)
        total += mid
        p90 = statistics.quantiles(values, n=10)[-1]
        lines.append(f"| {step} | {mid:.1f} | {p90:.1f} |")
    lines.append(f"| **sum of medians** | **{total:.1f}** | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.voucher_steps")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--road", action="store_true", help="the voucher road's steps")
    args = parser.parse_args()
    took = asyncio.run(run_road(args.calls) if args.road else run(args.calls))
    text = markdown(took, args.calls, args.road)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("voucher-steps-road.md" if args.road else "voucher-steps.md")).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
