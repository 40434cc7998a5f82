"""Money at the edges (issue 11), end to end, many times with random timing: a payer that
hangs up at every step and retries at once, forged signatures, a paid HEAD.

Real parts only: anvil and the test USDC, the SDK's facilitator over HTTP behind a relay that
holds each call for a random while (it widens the windows; the facilitator is the real one),
the SDK's paying client, redis-server, a real gateway process and an origin process. What
must hold every time: a payer who was charged is never told to pay again (no 402 for a payment
the chain took), one authorization is charged at most once, and the books (access lines,
`x402_gateway_payments_total`, revenue) match the chain exactly.

`make test` runs a small number of rounds; the `slow` variants soak with many more.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from prometheus_client.parser import text_string_to_metric_families
from x402.http.utils import decode_payment_response_header

from gateway.demo.chain import new_account
from gateway.demo.payer import make_x402_client, pay_challenge
from gateway.store.redis import ALIVE_TTL
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import (
    PRICE,
    FacilitatorRelay,
    OriginProcess,
    gateway_config,
    running,
)
from tests.e2e.gateway_proc import GatewayProcess
from tests.procs import RedisServer

pytestmark = pytest.mark.e2e
HANGUP_ROUNDS = 12  # `make test`; the slow soak runs SOAK_ROUNDS
SOAK_ROUNDS = 80


@pytest.fixture
def origin() -> Iterator[OriginProcess]:
    o = OriginProcess().start()
    yield o
    o.stop()


class Signer:
    """One funded account and the SDK's client: signs a fresh authorization per call."""

    def __init__(self, chain: Chain, account: LocalAccount) -> None:
        self.chain = chain
        self.account = account
        self.client = make_x402_client(account, [(chain.network, chain.token)])

    async def sign(self, gw: GatewayProcess, path: str) -> tuple[dict[str, str], str]:
        async with httpx.AsyncClient() as http:
            challenge = await http.get(gw.url + path)
        assert challenge.status_code == 402, challenge.text
        headers, payload = await pay_challenge(self.client, challenge.headers, challenge.content)
        return headers, str(payload.payload["authorization"]["nonce"])


async def hang_up(gw: GatewayProcess, target: str, headers: dict[str, str], after: float) -> None:
    """Send the paid request on a raw socket and drop the connection `after` seconds later
    (0: as soon as it is sent), whatever the gateway was doing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{gw.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(after):
            while await reader.read(65536):
                pass
    writer.transport.abort()


async def retry_until_final(
    gw: GatewayProcess, target: str, headers: dict[str, str]
) -> list[tuple[int, str]]:
    """Retry the same payment at once and on each `payment_in_flight`, until an answer that
    ends it; every answer on the way, as (status, reason)."""
    answers: list[tuple[int, str]] = []
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=30) as http:
        while time.monotonic() < deadline:
            r = await http.get(gw.url + target, headers=headers)
            reason = r.json().get("reason", "") if r.status_code >= 400 else ""
            answers.append((r.status_code, reason))
            if reason != "payment_in_flight":
                return answers
            assert r.headers.get("Retry-After"), "a payment in flight says when to come back"
            await asyncio.sleep(0.05)  # an impatient client: far sooner than Retry-After
    raise TimeoutError(f"still in flight after 60 s: {answers[-3:]}")


def scrape(gw: GatewayProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **want: str
) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and set(want.items()) <= labels)


def access_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in gw.logs().splitlines() if x.startswith("{")]
    return [r for r in rows if r.get("event") == "request" and "payment" in r]


def wait_idle(
    gw: GatewayProcess, timeout: float = 30
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The metrics once no request is in flight (hung-up ones are booked when they end)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(gw)
        if total(m, "x402_gateway_in_flight_requests") == 0:
            return m
        if time.monotonic() > deadline:
            raise TimeoutError("requests still in flight")
        time.sleep(0.05)


async def run_hangups(
    chain: Chain,
    origin: OriginProcess,
    facilitator_url: str,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
    rounds: int,
) -> None:
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    # Hold each facilitator call a random while: hang-ups land before verify, during verify,
    # during settle (before and after the chain took it) and during the body.
    relay = FacilitatorRelay(
        facilitator_url,
        after_settle=lambda: time.sleep(rng.uniform(0, 0.4)),
        before=lambda op: rng.uniform(0, 0.3) if op in ("verify", "settle") else 0.0,
    ).start()
    pay_to = str(new_account().address)
    signer = Signer(chain, make_payer(PRICE * rounds * 2))
    start_balance = chain.balance_of(pay_to)
    facilitator = {"url": relay.url, "timeout": "10s"}
    cfg = gateway_config(chain, origin.url, pay_to, facilitator, redis.url)
    with running(relay, gw := GatewayProcess(cfg, tmp_path).start()):
        nonces: list[str] = []
        answers: Counter[str] = Counter()
        for i in range(rounds):
            drip = rng.choice([0.0, 0.0, 0.3])
            target = f"/paid/h{i}?drip={drip}"
            headers, nonce = await signer.sign(gw, target)
            nonces.append(nonce)
            await hang_up(gw, target, headers, after=rng.uniform(0, 0.8))
            got = await retry_until_final(gw, target, headers)
            assert all(status != 402 for status, _ in got), (seed, i, got)
            final = got[-1]
            assert final in ((200, ""), (409, "payment_already_used")), (seed, i, got)
            answers[f"{final[0]} {final[1]}".strip()] += 1
            answers["in_flight_answers"] += len(got) - 1
        m = wait_idle(gw)
        lines = access_lines(gw)
    charged = [n for n in nonces if chain.authorization_state(str(signer.account.address), n)]
    # Every payment was charged exactly once: by the hung-up request or by its retry.
    assert len(charged) == rounds, seed
    assert chain.balance_of(pay_to) - start_balance == rounds * PRICE, seed
    settled_lines = [r for r in lines if r["payment"] == "settled"]
    assert len(settled_lines) == rounds, (seed, Counter(r["payment"] for r in lines))
    assert len({r["transaction"] for r in settled_lines}) == rounds
    assert total(m, "x402_gateway_payments_total", outcome="settled") == rounds
    assert total(m, "x402_gateway_revenue_atomic_units_total") == rounds * PRICE
    hung = Counter(f"{step(r)}:{r['payment']}" for r in lines if r["status"] == 499)
    print(f"\nhang-ups: seed={seed} rounds={rounds} retries={dict(answers)} hung-up={dict(hung)}")


def step(line: dict[str, Any]) -> str:
    """Where a hung-up request was when its client left, from its access line's step times
    (verify, then the origin's head, then settle and the body: the last two look alike)."""
    if "settle_ms" in line:
        return "settle_or_body"
    if "verify_ms" in line:
        return "verify_or_origin"
    return "before_verify"


async def test_hang_up_at_any_step_then_retry_never_402_and_books_match_chain(
    chain: Chain,
    origin: OriginProcess,
    facilitator_url: str,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    await run_hangups(
        chain, origin, facilitator_url, redis, make_payer, tmp_path, rounds=HANGUP_ROUNDS
    )


@pytest.mark.slow
async def test_hang_up_soak(
    chain: Chain,
    origin: OriginProcess,
    facilitator_url: str,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    await run_hangups(
        chain, origin, facilitator_url, redis, make_payer, tmp_path, rounds=SOAK_ROUNDS
    )


# --- forged signatures cost no facilitator call ----------------------------------------


def forge(header: str, victim: str) -> str:
    """The attacker's own signed payment, re-addressed as if `victim` had signed it."""
    data = json.loads(base64.b64decode(header))
    data["payload"]["authorization"]["from"] = victim
    return base64.b64encode(json.dumps(data).encode()).decode()


async def test_fifty_forged_signatures_make_no_facilitator_call(
    chain: Chain,
    origin: OriginProcess,
    facilitator_url: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    relay = FacilitatorRelay(facilitator_url, after_settle=lambda: None).start()
    pay_to = str(new_account().address)
    victim = make_payer(PRICE * 10)
    attacker = Signer(chain, new_account())  # no funds needed: it only signs
    cfg = gateway_config(chain, origin.url, pay_to, {"url": relay.url}, "memory")
    with running(relay, gw := GatewayProcess(cfg, tmp_path).start()):
        forged = []
        for i in range(50):
            headers, _ = await attacker.sign(gw, f"/paid/f{i}")
            forged.append({k: forge(v, str(victim.address)) for k, v in headers.items()})
        before = [c for c in relay.calls if c != "supported"]
        async with httpx.AsyncClient(timeout=15) as http:
            answers = await asyncio.gather(
                *(http.get(f"{gw.url}/paid/f{i}", headers=h) for i, h in enumerate(forged))
            )
        assert {(r.status_code, r.json()["error"]) for r in answers} == {
            (402, "invalid_exact_evm_payload_signature")
        }
        assert [c for c in relay.calls if c != "supported"] == before == []
        # The same relay does carry a genuine payment: the count above could have moved.
        headers, nonce = await Signer(chain, victim).sign(gw, "/paid/genuine")
        async with httpx.AsyncClient(timeout=15) as http:
            ok = await http.get(gw.url + "/paid/genuine", headers=headers)
        assert ok.status_code == 200, ok.text
        assert [c for c in relay.calls if c != "supported"] == ["verify", "settle"]
    assert chain.authorization_state(str(victim.address), nonce)
    assert chain.balance_of(str(victim.address)) == PRICE * 9


# --- a gateway SIGKILLed mid-payment, then restarted ----------------------------------


KILL_ROUNDS, KILL_PAYMENTS = 2, 8  # `make test`; the slow soak runs 6 x 12
RECONCILE_BOUND = 30.0  # heartbeat expiry (15 s) + the inline chain read + a restart's slack


async def run_kills(
    chain: Chain,
    origin: OriginProcess,
    facilitator_url: str,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
    rounds: int,
    payments: int,
) -> Counter[str]:
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    relay = FacilitatorRelay(
        facilitator_url,
        after_settle=lambda: time.sleep(rng.uniform(0, 0.3)),
        before=lambda op: rng.uniform(0, 0.5) if op in ("verify", "settle") else 0.0,
    ).start()
    pay_to = str(new_account().address)
    signer = Signer(chain, make_payer(PRICE * rounds * payments * 2))
    payer = str(signer.account.address)
    facilitator = {"url": relay.url, "timeout": "10s"}
    networks = {chain.network: {"rpc_url": chain.rpc_url}}  # the chain reads of reconcile
    cfg = gateway_config(chain, origin.url, pay_to, facilitator, redis.url, networks=networks)
    seen: Counter[str] = Counter()
    with running(relay):
        for r in range(rounds):
            with running(gw := GatewayProcess(cfg, tmp_path).start()):
                signed = [await signer.sign(gw, f"/paid/k{r}-{i}") for i in range(payments)]

                async def send(target: str, headers: dict[str, str]) -> None:
                    await asyncio.sleep(rng.uniform(0, 1.0))
                    await hang_up(gw, target, headers, after=30)

                sends = [
                    asyncio.ensure_future(send(f"/paid/k{r}-{i}", h))
                    for i, (h, _) in enumerate(signed)
                ]
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                assert gw.proc is not None
                gw.proc.kill()
                gw.proc.wait(10)
                await asyncio.gather(*sends, return_exceptions=True)
            await asyncio.sleep(2)  # what the relay still carried reaches the chain
            killed = time.monotonic()
            charged = {n: chain.authorization_state(payer, n) for _, n in signed}
            transactions = {s.get("transaction") for s in relay.settled}
            if r == 0:  # the operator's way first: `payments --reconcile`, once it is dead
                await asyncio.sleep(max(0.0, ALIVE_TTL + 1 - (time.monotonic() - killed)))
                # The store is shared with other tests: their dead gateways' records too.
                for row in (x for x in reconcile_cli(gw) if x["nonce"] in charged):
                    if row["now"] == "settled":
                        assert charged[row["nonce"]] and row["tx"] in transactions, (seed, row)
                    else:
                        assert row["now"] == "released" and not charged[row["nonce"]], row
                    seen[f"cli_{row['was']}_to_{row['now']}"] += 1
            with running(again := GatewayProcess(cfg, tmp_path).start()):
                started = time.monotonic()
                for i, (headers, nonce) in enumerate(signed):
                    got = await retry_until_final(again, f"/paid/k{r}-{i}", headers)
                    assert time.monotonic() - started < RECONCILE_BOUND, (seed, got)
                    assert all(status != 402 for status, _ in got), (seed, nonce, got)
                    final = got[-1]
                    if charged[nonce]:
                        assert final == (409, "payment_already_used"), (seed, nonce, got)
                        seen["charged_409_with_tx"] += 1
                    else:
                        assert final == (200, ""), (seed, nonce, got)
                        seen["uncharged_proceeded"] += 1
                    seen["in_flight_answers"] += len(got) - 1
                replies = await asyncio.gather(
                    *(
                        get_receipt(again, f"/paid/k{r}-{i}", h)
                        for i, (h, n) in enumerate(signed)
                        if charged[n]
                    )
                )
                assert all(tx in transactions for tx in replies), (seed, replies)
            # Each authorization charged exactly once, whatever the kill point.
            assert all(chain.authorization_state(payer, n) for _, n in signed), seed
    print(f"\nkills: seed={seed} rounds={rounds} payments={payments} {dict(seen)}")
    return seen


def reconcile_cli(gw: GatewayProcess) -> list[dict[str, Any]]:
    exe = str(Path(sys.executable).with_name("x402-gateway"))
    argv = [exe, "payments", "--reconcile", "--config", str(gw.config_path)]
    out = subprocess.run(argv, check=False, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    return [row for row in rows if "now" in row]  # (a warning would be a log line)


async def get_receipt(gw: GatewayProcess, target: str, headers: dict[str, str]) -> str:
    """The transaction the gateway's 409 names for an already-used payment."""
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.get(gw.url + target, headers=headers)
    assert r.status_code == 409, r.text
    return str(decode_payment_response_header(r.headers["PAYMENT-RESPONSE"]).transaction)


async def test_sigkill_at_random_points_then_restart_answers_every_retry_right(
    chain: Chain,
    origin: OriginProcess,
    facilitator_url: str,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    await run_kills(
        chain, origin, facilitator_url, redis, make_payer, tmp_path, KILL_ROUNDS, KILL_PAYMENTS
    )


@pytest.mark.slow
async def test_sigkill_soak(
    chain: Chain,
    origin: OriginProcess,
    facilitator_url: str,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    await run_kills(chain, origin, facilitator_url, redis, make_payer, tmp_path, 6, 12)
