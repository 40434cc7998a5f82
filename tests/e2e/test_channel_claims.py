"""The claim schedule on anvil with the official SDK's own batch-settlement parts (its
payer client, its server scheme over the gateway's Redis channel storage, its facilitator):
every voucher served is claimed, in one claim transaction, and a serving process SIGKILLed
mid-run loses none. Money is counted on chain.

Keys: each test's facilitator is a fresh account given test ETH by anvil (no other test
sends from it); its batch-settlement authorizer a fresh key (signs, never sends).
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis as sync_redis

from gateway.demo import chain as chainlib
from gateway.payment.channel_claims import ClaimPolicy
from gateway.payment.channel_scheduler import ClaimScheduler
from gateway.store.channels import RedisChannelStorage
from gateway.store.claim_lock import RedisClaimLock
from gateway.store.redis import RedisStore
from tests.e2e.channel_parts import (
    AsyncFacilitator,
    build_rig,
    call_once,
    contract_calls,
    funded_key,
    payer_client,
)
from tests.e2e.conftest import Chain
from tests.procs import RedisServer, stop

pytestmark = pytest.mark.e2e

PRICE = 1_000  # $0.001


@pytest.fixture
def db(redis: RedisServer) -> str:
    """A database of its own on the session's redis-server: only this test's channels."""
    url = redis.url.rsplit("/", 1)[0] + "/4"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
async def lock_store(db: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(db)
    yield store
    await store.close()


def _scheduler(
    chain: Chain, storage: RedisChannelStorage, facilitator: object, store: RedisStore, every: float
) -> ClaimScheduler:
    return ClaimScheduler(
        storage=storage,
        facilitator=facilitator,  # type: ignore[arg-type]
        lock=RedisClaimLock(store.client, store.call),
        policy=ClaimPolicy(every=every, over=Decimal(1000)),
        networks=[chain.network],
    )


@pytest.mark.parametrize(
    ("claim_payout", "claim_calls"),
    [
        # The SDK's own facilitator: claimWithSignature, then a separate settle to the payee.
        (False, {"claimWithSignature": 1, "settle": 1}),
        # The gateway's facilitators (local, engine): one multicall that claims and pays out.
        (True, {"multicall": 1}),
    ],
    ids=["sdk-facilitator", "claim-pays-out"],
)
async def test_200_paid_calls_then_exactly_one_claim_transaction(
    chain: Chain, db: str, lock_store: RedisStore, claim_payout: bool, claim_calls: dict[str, int]
) -> None:
    receiver = str(chainlib.new_account().address)
    storage = RedisChannelStorage(db)
    rig = build_rig(
        rpc_url=chain.rpc_url,
        network=chain.network,
        facilitator_key=funded_key(chain.rpc_url),
        authorizer_key="0x" + bytes(chainlib.new_account().key).hex(),
        receiver=receiver,
        token=chain.token,
        price=PRICE,
        storage=storage,
        claim_payout=claim_payout,
    )
    client = payer_client(
        chain.local.new_payer(5_000_000), chain.rpc_url, chain.network, chain.token
    )
    start = chainlib.block_number(chain.rpc_url) + 1

    kinds = [await call_once(rig, client) for _ in range(200)]
    assert kinds == ["deposit"] + ["voucher"] * 199
    assert contract_calls(chain.rpc_url, start) == {"deposit": 1}  # vouchers: no transaction
    assert chain.balance_of(receiver) == 0

    # The schedule, as the gateway runs it: every 0.5 s, in the background.
    sched = _scheduler(chain, storage, AsyncFacilitator(rig.facilitator), lock_store, every=0.5)
    task = asyncio.create_task(sched.run())
    try:
        deadline = time.monotonic() + 60
        while chain.balance_of(receiver) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # three more rounds: they must send nothing
    finally:
        task.cancel()
        await sched.wait_idle()
    assert chain.balance_of(receiver) == 200 * PRICE
    calls = contract_calls(chain.rpc_url, start)
    assert calls == {"deposit": 1, **claim_calls}, calls
    [channel] = [c for c in storage.list() if c.channel_config.receiver.lower() == receiver.lower()]
    assert int(channel.total_claimed) == int(channel.charged_cumulative_amount) == 200 * PRICE
    storage.close()


def _lines(proc: subprocess.Popen[bytes], until: int, timeout: float) -> int:
    """Read `{"served": n}` lines until n reaches `until`; the last n read."""
    assert proc.stdout is not None
    served, deadline = 0, time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while served < until and time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                line = proc.stdout.readline()
                if not line:
                    break
                served = json.loads(line)["served"]
    return served


async def test_a_server_sigkilled_mid_run_loses_no_voucher(
    chain: Chain, db: str, lock_store: RedisStore
) -> None:
    receiver = str(chainlib.new_account().address)
    facilitator_key = funded_key(chain.rpc_url)
    authorizer_key = "0x" + bytes(chainlib.new_account().key).hex()
    payer = chain.local.new_payer(5_000_000)
    run = {
        "rpc_url": chain.rpc_url,
        "network": chain.network,
        "facilitator_key": facilitator_key,
        "authorizer_key": authorizer_key,
        "receiver": receiver,
        "token": chain.token,
        "price": PRICE,
        "redis_url": db,
        "payer_key": "0x" + bytes(payer.key).hex(),
        "calls": 100_000,
    }
    start = chainlib.block_number(chain.rpc_url) + 1
    env = {**os.environ, "X402_CHANNEL_RUN": json.dumps(run)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e._channel_payer"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        served = _lines(proc, until=60, timeout=120)
    finally:
        stop(proc, signal.SIGKILL)  # mid-run: vouchers keep coming until the kill
        assert proc.stdout is not None
        proc.stdout.close()
    assert served >= 60

    # A new process (this one), the same Redis: claims what the dead one served.
    storage = RedisChannelStorage(db)
    [channel] = [c for c in storage.list() if c.channel_config.receiver.lower() == receiver.lower()]
    charged = int(channel.charged_cumulative_amount)
    # Every answered call is charged; at most the one in flight at the kill beyond them.
    assert served * PRICE <= charged <= (served + 1) * PRICE
    rig = build_rig(
        rpc_url=chain.rpc_url,
        network=chain.network,
        facilitator_key=facilitator_key,
        authorizer_key=authorizer_key,
        receiver=receiver,
        token=chain.token,
        price=PRICE,
        storage=storage,
    )
    sched = _scheduler(chain, storage, AsyncFacilitator(rig.facilitator), lock_store, every=3600)
    [outcome] = await sched.claim_now()
    assert (outcome.error, outcome.vouchers, outcome.amount) == (None, 1, charged)
    assert chain.balance_of(receiver) == charged
    assert contract_calls(chain.rpc_url, start) == {
        "deposit": 1,
        "claimWithSignature": 1,
        "settle": 1,
    }
    storage.close()
