"""The verify and settle steps of a channel voucher on a real redis-server, the SDK's path
(its hooks in the thread pool, WATCH/MULTI storage) beside the fast path (on the loop, one
compare-and-set round trip each), in one process and one run: what section E (a memory
store) does not show. A developer's measurement, not a bench section:

    .venv/bin/python -m bench.channel_store [--vouchers 600] [--rounds 2]

It reuses the unit tests' channel fixtures (a seeded channel with fresh on-chain state and
the SDK client's vouchers), so it runs from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from x402.mechanisms.evm.batch_settlement.server.storage import Channel
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from gateway.config.settings import ChannelsSettings
from gateway.payment import decode_payment, match_requirement
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.payment.match import MatchedPayment
from gateway.store.channel_writer import open_channel_writer
from gateway.store.channels import RedisChannelStorage
from gateway.store.redis import RedisStore
from tests.procs import redis_server
from tests.unit.payment.test_channel_terms import voucher_payload
from tests.unit.payment.test_channels import (
    BATCH,
    CONFIG,
    KEY,
    PRICE,
    PRICED,
    ChannelFacilitator,
    channel_id,
)
from tests.unit.wire_helpers import URL, accepted, b64json, headers, settings

WARMUP = 100


def seeded(storage: RedisChannelStorage) -> None:
    cid = channel_id()
    channel = Channel(
        channel_id=cid,
        channel_config=ChannelConfig.from_dict(CONFIG),
        charged_cumulative_amount=str(PRICE),
        signed_max_claimable=str(PRICE),
        signature="0x" + "00" * 65,
        balance=str(10**12),
        onchain_synced_at=int(time.time() * 1000),
    )
    storage.update_channel(cid, lambda _: channel)


def vouchers(p: Payments, n: int) -> list[MatchedPayment]:
    out = []
    for k in range(2, n + 2):
        data = {
            "x402Version": 2,
            "accepted": accepted(BATCH),
            "payload": voucher_payload(k * PRICE, CONFIG),
            "resource": {"url": URL},
        }
        decoded = decode_payment(headers(("PAYMENT-SIGNATURE", b64json(data))), 16384)
        assert decoded is not None
        out.append(match_requirement(PRICED, decoded, URL, p.channel_ids))
    return out


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[int(len(xs) * q)] * 1e6


async def one_run(url: str, fast: bool, n: int) -> str:
    store = RedisStore(url)
    await store.client.flushall()
    storage = RedisChannelStorage(url)
    seeded(storage)
    p = Payments(ChannelFacilitator(), store)
    writer = open_channel_writer(storage, store) if fast else None
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage, writer=writer))
    assert await p.start() == []
    verify: list[float] = []
    settle: list[float] = []
    for i, matched in enumerate(vouchers(p, n)):
        async with p.claimed(matched, PRICED, f"req-{i}") as claim:
            started = time.perf_counter()
            await p.verify(claim)
            verified = time.perf_counter()
            assert (claim.hold is not None) is fast
            await p.settle(claim)
            settled = time.perf_counter()
        if i >= WARMUP:
            verify.append(verified - started)
            settle.append(settled - verified)
    await p.close()
    await store.close()
    name = "fast" if fast else "sdk"
    return (
        f"| {name} | {pct(verify, 0.5):.0f} / {pct(verify, 0.99):.0f} |"
        f" {pct(settle, 0.5):.0f} / {pct(settle, 0.99):.0f} |"
    )


async def main(n: int, rounds: int) -> None:
    print("| path | verify µs p50 / p99 | settle µs p50 / p99 |\n|---|---|---|")
    with redis_server() as server:
        for _ in range(rounds):
            for fast in (False, True):
                print(await one_run(server.url, fast, n))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.channel_store")
    parser.add_argument("--vouchers", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.vouchers + WARMUP, args.rounds))
