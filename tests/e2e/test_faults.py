"""Parts dying under a running gateway: Redis, facilitators, the origin, the gateway itself.

All real processes (redis-server, the SDK facilitator over HTTP, an origin process, the
gateway), anvil and the SDK payer; each killed by its pid. What must hold every time: a
paid response is never served without a settlement, nothing is charged for a response
that was not served, and one authorization is never charged twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_response_header

from gateway.demo.chain import ANVIL_KEYS, new_account
from gateway.demo.payer import make_x402_client, pay_challenge
from gateway.store import PaymentRecord
from gateway.store.redis import RedisStore
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import (
    PRICE,
    FacilitatorProcess,
    FacilitatorRelay,
    OriginProcess,
    gateway_config,
    payments_cli,
    ready,
    running,
    wait_ready_state,
)
from tests.e2e.gateway_proc import GatewayProcess
from tests.procs import RedisServer

pytestmark = pytest.mark.e2e
FUNDS = 10_000_000
# Settlement keys of the two facilitators this module kills (conftest uses #0..#3).
FAILOVER_KEYS = (ANVIL_KEYS[6], ANVIL_KEYS[7])


@pytest.fixture(scope="module")
def pay_to() -> str:
    return str(new_account().address)


@pytest.fixture
def origin() -> Iterator[OriginProcess]:
    o = OriginProcess().start()
    yield o
    o.stop()


class Payer:
    """A fresh funded account and the SDK's client for it; signs one payment per call."""

    def __init__(self, chain: Chain, account: LocalAccount) -> None:
        self.chain = chain
        self.account = account
        self.client = make_x402_client(account, [(chain.network, chain.token)])

    @property
    def address(self) -> str:
        return str(self.account.address)

    async def sign(self, gw: GatewayProcess, path: str) -> tuple[dict[str, str], str]:
        """The payment header for `path`, and its authorization nonce."""
        async with httpx.AsyncClient() as http:
            challenge = await http.get(gw.url + path)
        assert challenge.status_code == 402, challenge.text
        headers, payload = await pay_challenge(self.client, challenge.headers, challenge.content)
        return headers, str(payload.payload["authorization"]["nonce"])

    def balance(self) -> int:
        return self.chain.balance_of(self.address)


@pytest.fixture
def new_payer(chain: Chain, make_payer: Callable[..., LocalAccount]) -> Callable[[], Payer]:
    return lambda: Payer(chain, make_payer(FUNDS))


def start_gateway(tmp: Path, cfg: dict[str, Any]) -> GatewayProcess:
    return GatewayProcess(cfg, tmp).start()


async def get(url: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=kw.pop("timeout", 15)) as http:
        return await http.get(url, headers=headers, **kw)


def receipt(r: httpx.Response) -> Any:
    return decode_payment_response_header(r.headers["PAYMENT-RESPONSE"])


async def record_of(redis_url: str, nonce: str, status: str, timeout: float = 10) -> PaymentRecord:
    """Wait for the store's newest record of this authorization to reach `status`."""
    store = RedisStore(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            rows = [r for r in await store.recent(50) if r.nonce.lower() == nonce.lower()]
            if rows and rows[0].status == status:
                return rows[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"record of {nonce} is {rows[:1]}, never {status}")
            await asyncio.sleep(0.01)
    finally:
        await store.close()


# --- Redis dies mid-run and comes back ----------------------------------------------------


async def test_redis_killed_mid_run_fails_closed_then_recovers(
    chain: Chain,
    origin: OriginProcess,
    pay_to: str,
    facilitator_url: str,
    new_payer: Callable[[], Payer],
    tmp_path: Path,
) -> None:
    redis = RedisServer().start()
    facilitator = {"url": facilitator_url, "timeout": "10s"}
    gw = start_gateway(tmp_path, gateway_config(chain, origin.url, pay_to, facilitator, redis.url))
    with running(gw, redis):
        payer = new_payer()
        headers, _ = await payer.sign(gw, "/paid/before")
        assert (await get(gw.url + "/paid/before", headers)).status_code == 200

        # A request claimed while Redis was up, then Redis dies before `settling` could be
        # written: no settlement is started that no record could vouch for (issue 11), the
        # payer is told to come back (503), and nothing is charged.
        inflight_headers, _ = await payer.sign(gw, "/paid/inflight")
        inflight = asyncio.ensure_future(get(gw.url + "/paid/inflight?s=1", inflight_headers))
        await asyncio.to_thread(origin.wait_hit, "/paid/inflight")
        redis.stop(signal.SIGKILL)
        served = await inflight
        assert served.status_code == 503, served.text
        assert served.json()["reason"] == "store_unavailable"
        assert payer.balance() == FUNDS - PRICE

        # While Redis is down: paid routes fail closed, free routes serve, /readyz says why.
        headers, _ = await payer.sign(gw, "/paid/down")
        txs = chain.tx_count(chain.facilitator_address)
        down = await get(gw.url + "/paid/down", headers)
        assert down.status_code == 503, down.text
        assert down.json()["reason"] == "store_unavailable" and int(down.headers["Retry-After"]) > 0
        assert (await get(gw.url + "/free/ok")).status_code == 200
        body = wait_ready_state(gw, 503)
        assert body["checks"]["store"] != "ok" and body["checks"]["facilitator"] == "ok"
        assert origin.hits("/paid/down") == 0
        assert chain.tx_count(chain.facilitator_address) == txs

        # Redis is back (empty: it kept nothing on disk): the gateway reconnects by itself.
        restarted = RedisServer()
        restarted.port = redis.port
        with running(restarted.start()):
            wait_ready_state(gw, 200, timeout=10)
            again = await get(gw.url + "/paid/down", headers)
            assert again.status_code == 200, again.text
            assert payer.balance() == FUNDS - 2 * PRICE
            # The payment refused while Redis died was never charged: it pays now, once.
            replay = await get(gw.url + "/paid/inflight", inflight_headers)
            assert replay.status_code == 200, replay.text
            assert payer.balance() == FUNDS - 3 * PRICE
            twice = await get(gw.url + "/paid/inflight", inflight_headers)
            assert twice.status_code == 409, twice.text
            assert payer.balance() == FUNDS - 3 * PRICE


# --- facilitators die: failover, then fail closed -----------------------------------------


async def test_facilitator_killed_fails_over_then_fails_closed(
    chain: Chain,
    origin: OriginProcess,
    pay_to: str,
    redis: RedisServer,
    new_payer: Callable[[], Payer],
    tmp_path: Path,
) -> None:
    first, second = (FacilitatorProcess(chain, key).spawn() for key in FAILOVER_KEYS)
    with running(first, second):
        first.wait()
        second.wait()
        signers = [Account.from_key(key).address for key in FAILOVER_KEYS]
        facilitators = [{"url": f.url, "timeout": "5s"} for f in (first, second)]
        cfg = gateway_config(chain, origin.url, pay_to, facilitators, redis.url)
        gw = start_gateway(tmp_path, cfg)
        with running(gw):
            payer = new_payer()
            txs = [chain.tx_count(a) for a in signers]
            headers, _ = await payer.sign(gw, "/paid/one")
            assert (await get(gw.url + "/paid/one", headers)).status_code == 200
            assert [chain.tx_count(a) for a in signers] == [txs[0] + 1, txs[1]]

            first.stop(signal.SIGKILL)
            headers, _ = await payer.sign(gw, "/paid/two")
            r = await get(gw.url + "/paid/two", headers)
            assert r.status_code == 200, r.text
            assert [chain.tx_count(a) for a in signers] == [txs[0] + 1, txs[1] + 1]
            assert ready(gw)[0] == 200  # the second one is usable

            second.stop(signal.SIGKILL)
            headers, _ = await payer.sign(gw, "/paid/three")
            r = await get(gw.url + "/paid/three", headers)
            assert r.status_code == 503, r.text
            assert r.json()["reason"] == "facilitator_unavailable" and "Retry-After" in r.headers
            assert origin.hits("/paid/three") == 0
            assert payer.balance() == FUNDS - 2 * PRICE
            body = wait_ready_state(gw, 503)
            assert body["checks"]["facilitator"] != "ok" and body["checks"]["store"] == "ok"
            assert "facilitator_failed" in gw.logs()


# --- the origin dies: 502, nothing charged ------------------------------------------------


async def test_origin_killed_mid_request_is_a_502_and_charges_nothing(
    chain: Chain,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    new_payer: Callable[[], Payer],
    tmp_path: Path,
) -> None:
    origin = OriginProcess().start()
    facilitator = {"url": facilitator_url, "timeout": "10s"}
    gw = start_gateway(tmp_path, gateway_config(chain, origin.url, pay_to, facilitator, redis.url))
    with running(gw, origin):
        payer = new_payer()
        headers, _ = await payer.sign(gw, "/paid/report")
        txs = chain.tx_count(chain.facilitator_address)
        pending = asyncio.ensure_future(get(gw.url + "/paid/report?s=30", headers))
        await asyncio.to_thread(origin.wait_hit, "/paid/report")
        origin.stop(signal.SIGKILL)
        r = await pending
        assert r.status_code == 502, r.text
        assert "PAYMENT-RESPONSE" not in r.headers
        gone = await get(gw.url + "/paid/report", headers)  # nothing listens now
        assert gone.status_code == 502, gone.text
        assert chain.tx_count(chain.facilitator_address) == txs
        assert payer.balance() == FUNDS

        back = OriginProcess(port=origin.port).start()
        with running(back):
            # Nothing was charged and the claim was released: the same payment buys it now.
            ok = await get(gw.url + "/paid/report", headers)
            assert ok.status_code == 200, ok.text
            assert payer.balance() == FUNDS - PRICE
            assert chain.tx_count(chain.facilitator_address) == txs + 1


# --- SIGTERM: the paid request in flight completes and settles, then the process exits -----


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return True
    return False


async def test_sigterm_finishes_the_paid_request_in_flight_then_exits(
    chain: Chain,
    origin: OriginProcess,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    new_payer: Callable[[], Payer],
    tmp_path: Path,
) -> None:
    facilitator = {"url": facilitator_url, "timeout": "10s"}
    gw = start_gateway(tmp_path, gateway_config(chain, origin.url, pay_to, facilitator, redis.url))
    with running(gw):
        payer = new_payer()
        headers, _ = await payer.sign(gw, "/paid/long")
        txs = chain.tx_count(chain.facilitator_address)
        pending = asyncio.ensure_future(get(gw.url + "/paid/long?s=2", headers))
        await asyncio.to_thread(origin.wait_hit, "/paid/long")
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.5
        while not refused(gw.port) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert refused(gw.port), "new connections are still accepted while draining"
        assert not pending.done()
        r = await pending
        assert r.status_code == 200, r.text
        assert receipt(r).success and r.json()["path"] == "/paid/long"
        assert chain.tx_count(chain.facilitator_address) == txs + 1
        assert payer.balance() == FUNDS - PRICE
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
        events = [json.loads(x).get("event") for x in gw.logs().splitlines() if x.startswith("{")]
        assert events.index("draining") < events.index("stopped")


# --- SIGKILL around the settlement: a retry is never charged -------------------------------


async def test_sigkill_after_the_settlement_is_recorded(
    chain: Chain,
    origin: OriginProcess,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    new_payer: Callable[[], Payer],
    tmp_path: Path,
) -> None:
    """Killed after it recorded the settlement, while the body was still on its way."""
    facilitator = {"url": facilitator_url, "timeout": "10s"}
    cfg = gateway_config(chain, origin.url, pay_to, facilitator, redis.url)
    gw = start_gateway(tmp_path, cfg)
    with running(gw):
        payer = new_payer()
        headers, nonce = await payer.sign(gw, "/paid/crash")
        txs = chain.tx_count(chain.facilitator_address)
        cut = asyncio.ensure_future(get(gw.url + "/paid/crash?drip=30", headers))
        settled = await record_of(redis.url, nonce, "settled")
        assert gw.proc is not None
        gw.proc.kill()
        gw.proc.wait(10)
        with contextlib.suppress(httpx.HTTPError):
            r = await cut
            pytest.fail(f"the response completed after SIGKILL: {r.status_code} {r.text}")
    assert settled.transaction and settled.payer.lower() == payer.address.lower()
    assert chain.authorization_state(payer.address, nonce)
    assert payer.balance() == FUNDS - PRICE

    # Another replica (a new process on the same store) answers the retry from the record.
    with running(replica := start_gateway(tmp_path, cfg)):
        again = await get(replica.url + "/paid/crash", headers)
        assert again.status_code == 409, again.text
        assert again.json()["reason"] == "payment_already_used"
        assert receipt(again).transaction == settled.transaction
        (row,) = [json.loads(x) for x in payments_cli(replica).splitlines() if nonce in x]
        assert (row["status"], row["transaction"]) == ("settled", settled.transaction)
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert payer.balance() == FUNDS - PRICE
    assert origin.hits("/paid/crash") == 1


async def test_sigkill_between_settlement_and_its_record(
    chain: Chain,
    origin: OriginProcess,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    new_payer: Callable[[], Payer],
    tmp_path: Path,
) -> None:
    """Killed after the facilitator settled, before the gateway heard of it: the record
    says settling, the chain says used, and a retry is refused without a charge."""
    victim: list[GatewayProcess] = []

    def kill_gateway() -> None:
        proc = victim[0].proc
        assert proc is not None
        proc.kill()
        proc.wait(10)

    relay = FacilitatorRelay(facilitator_url, after_settle=kill_gateway).start()
    with running(relay):
        facilitator = {"url": relay.url, "timeout": "10s"}
        gw = start_gateway(
            tmp_path, gateway_config(chain, origin.url, pay_to, facilitator, redis.url)
        )
        victim.append(gw)
        with running(gw):
            payer = new_payer()
            headers, nonce = await payer.sign(gw, "/paid/lost")
            txs = chain.tx_count(chain.facilitator_address)
            with pytest.raises(httpx.HTTPError):
                await get(gw.url + "/paid/lost", headers)
    assert len(relay.settled) == 1 and relay.settled[0]["success"]
    assert chain.authorization_state(payer.address, nonce)
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    pending = await record_of(redis.url, nonce, "settling", timeout=1)
    assert pending.transaction is None and pending.payer.lower() == payer.address.lower()

    direct = {"url": facilitator_url, "timeout": "10s"}
    cfg = gateway_config(chain, origin.url, pay_to, direct, redis.url)
    with running(replica := start_gateway(tmp_path, cfg)):
        again = await get(replica.url + "/paid/lost", headers)
        assert again.status_code == 409, again.text
        assert again.json()["reason"] == "payment_in_flight"
        rows = [json.loads(x) for x in payments_cli(replica).splitlines() if nonce in x]
        assert [row["status"] for row in rows] == ["settling"]
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert payer.balance() == FUNDS - PRICE
