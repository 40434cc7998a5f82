"""Sign-In-With-X access (`access: {for: 24h}`), end to end: real gateway processes, anvil,
the SDK facilitator over HTTP, the SDK's payer with its own SIWX client extension, and one
real redis-server shared by two replicas. Transactions are counted on the chain."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from eth_account.signers.local import LocalAccount
from prometheus_client.parser import text_string_to_metric_families
from x402.extensions.sign_in_with_x import (
    SIGN_IN_WITH_X,
    CreateSIWxClientExtensionOptions,
    create_siwx_client_extension,
    create_siwx_payload,
    encode_siwx_header,
)
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner

from gateway.demo.payer import make_x402_client, pay_challenge, payment_required_of
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import gateway_config
from tests.e2e.gateway_proc import GatewayProcess, Origin
from tests.procs import RedisServer

pytestmark = pytest.mark.e2e

REPORT_PRICE = 50_000  # "$0.05" in the 6-decimal test USDC
PUBLIC_URL = "https://api.example.com"  # the replicas' shared public origin (a balancer's)
ROUTES = [
    {"path": "/free/*", "price": "free"},
    {"path": "/paid/*", "price": "$0.001"},
    {"path": "/reports/*", "price": "$0.05", "access": {"for": "24h"}},
]


def _config(chain: Chain, origin: Origin, pay_to: str, facilitator_url: str, store: str) -> Any:
    facilitator = {"url": facilitator_url, "timeout": "10s"}
    return gateway_config(chain, origin.url, pay_to, facilitator, store, routes=ROUTES)


def _with_public_url(gw: GatewayProcess, public_url: str) -> GatewayProcess:
    """Write `public_url` into the gateway's config (its own URL is known once it has a port)."""
    config = yaml.safe_load(gw.config_path.read_text())
    gw.config_path.write_text(yaml.safe_dump({**config, "public_url": public_url}))
    return gw


@pytest.fixture(scope="module")
def single(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """One gateway, memory store, whose public URL is its own address (the SDK's client
    only signs a challenge bound to the origin it is talking to)."""
    cfg = _config(chain, origin, pay_to, facilitator_url, "memory")
    gw = GatewayProcess(cfg, tmp_path_factory.mktemp("siwx"))
    _with_public_url(gw, gw.url).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def replicas(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("siwx-replicas")
    cfg = {**_config(chain, origin, pay_to, facilitator_url, redis.url), "public_url": PUBLIC_URL}
    one, two = GatewayProcess(cfg, tmp), GatewayProcess(cfg, tmp)
    try:
        one.start(ready=False)
        two.start(ready=False)
        one.wait_ready()
        two.wait_ready()
        yield one, two
    finally:
        one.stop()
        two.stop()


def siwx_payer(chain: Chain, account: LocalAccount) -> x402HttpxClient:
    """The SDK's own client: pays `exact`, and answers a SIWX challenge by signing in."""
    client = make_x402_client(account, [(chain.network, chain.token)])
    signer = EthAccountSigner(account)
    client.register_extension(
        create_siwx_client_extension(CreateSIWxClientExtensionOptions(signers=[signer]))
    )
    return x402HttpxClient(client, timeout=30)


async def challenge_info(gw: GatewayProcess, path: str) -> dict[str, Any]:
    """The SIWX challenge of a fresh 402, with the chain chosen (as the SDK's hook does)."""
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(gw.url + path)
    assert r.status_code == 402, r.text
    declared = payment_required_of(r.headers, r.content).extensions or {}
    siwx = declared[SIGN_IN_WITH_X]
    chain = siwx["supportedChains"][0]
    return {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"]}


async def proof(
    gw: GatewayProcess, account: LocalAccount, path: str, url: str, **changes: Any
) -> str:
    """A SIGN-IN-WITH-X header made by the SDK for a fresh challenge of `gw` (`url`: the URL
    the client believes it talks to; `changes`: fields altered before signing)."""
    info = {**(await challenge_info(gw, path)), **changes}
    payload = await create_siwx_payload(info, EthAccountSigner(account), url)
    return encode_siwx_header(payload)


async def get(gw: GatewayProcess, path: str, header: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(gw.url + path, headers={SIGN_IN_WITH_X: header})


def reason(r: httpx.Response) -> str:
    return str(payment_required_of(r.headers, r.content).error)


async def pay_once(chain: Chain, gw: GatewayProcess, account: LocalAccount, path: str) -> None:
    async with siwx_payer(chain, account) as http:
        r = await http.get(gw.url + path)
    assert r.status_code == 200, r.text
    assert "PAYMENT-RESPONSE" in r.headers


# --- one gateway --------------------------------------------------------------------------


async def test_pay_once_then_fifty_sign_ins_with_no_transaction(
    single: GatewayProcess,
    origin: Origin,
    chain: Chain,
    pay_to: str,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer()
    txs, paid_to = chain.tx_count(chain.facilitator_address), chain.balance_of(pay_to)
    async with siwx_payer(chain, payer) as http:
        first = await http.get(single.url + "/reports/q1")
        assert first.status_code == 200, first.text
        assert "PAYMENT-RESPONSE" in first.headers  # paid: 402, sign-in refused, paid
        assert chain.tx_count(chain.facilitator_address) == txs + 1
        for i in range(50):
            # Same route, any path under it: the SDK's hook signs each fresh challenge.
            r = await http.get(single.url + ("/reports/q1" if i % 2 else f"/reports/r{i}"))
            assert r.status_code == 200, r.text
            assert "PAYMENT-RESPONSE" not in r.headers
            assert r.json()["payer"].lower() == payer.address.lower()  # X-Payer at the origin
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert chain.balance_of(pay_to) == paid_to + REPORT_PRICE
    assert chain.balance_of(payer.address) == 10_000_000 - REPORT_PRICE
    seen = [c for c in origin.log.calls if c["path"].startswith("/reports/")]
    mine = [c for c in seen if c["headers"].get("X-Payer", "").lower() == payer.address.lower()]
    assert len(mine) == 51
    assert all(SIGN_IN_WITH_X not in {k.upper() for k in c["headers"]} for c in mine)


async def test_a_second_wallet_is_refused(
    single: GatewayProcess,
    origin: Origin,
    chain: Chain,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer, other = make_payer(), make_payer()
    await pay_once(chain, single, payer, "/reports/mine")
    calls = len(origin.log.calls)
    # The other wallet signs in as itself: it has not paid for the route.
    r = await get(single, "/reports/mine", await proof(single, other, "/reports/mine", single.url))
    assert r.status_code == 402
    assert reason(r) == "siwx_not_paid"
    # The other wallet's signature over a message naming the payer's address.
    info = await challenge_info(single, "/reports/mine")
    signed = await create_siwx_payload(info, EthAccountSigner(other), single.url)
    forged = signed.model_copy(update={"address": payer.address})
    r = await get(single, "/reports/mine", encode_siwx_header(forged))
    assert r.status_code == 402
    assert reason(r) == "invalid_siwx_signature"
    # Paying for one route signs in to that route only.
    r = await get(single, "/paid/x", await proof(single, payer, "/reports/mine", single.url))
    assert r.status_code == 402
    assert len(origin.log.calls) == calls


async def test_a_nonce_buys_one_sign_in_even_sent_at_once(
    single: GatewayProcess,
    origin: Origin,
    chain: Chain,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer()
    await pay_once(chain, single, payer, "/reports/once")
    header = await proof(single, payer, "/reports/once", single.url)
    calls = len(origin.log.for_path("/reports/once"))
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as http:
        answers = await asyncio.gather(
            *(
                http.get(single.url + "/reports/once", headers={SIGN_IN_WITH_X: header})
                for _ in range(20)
            )
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [402] * 19, statuses
    assert {reason(a) for a in answers if a.status_code == 402} == {"siwx_nonce_used"}
    assert len(origin.log.for_path("/reports/once")) == calls + 1


async def test_a_proof_is_bound_to_the_public_url(
    single: GatewayProcess,
    chain: Chain,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer()
    await pay_once(chain, single, payer, "/reports/bound")
    info = await challenge_info(single, "/reports/bound")
    assert info["domain"] == single.url.removeprefix("http://")
    assert info["uri"] == single.url + "/reports/bound"
    # A proof for another origin (a phishing site relaying the challenge) is refused...
    elsewhere = await proof(
        single,
        payer,
        "/reports/bound",
        "https://evil.example/reports/bound",
        domain="evil.example",
        uri="https://evil.example/reports/bound",
    )
    r = await get(single, "/reports/bound", elsewhere)
    assert (r.status_code, reason(r)) == (402, "invalid_siwx_domain_mismatch")
    # ... and so is one for another path of this origin.
    other_path = await proof(
        single, payer, "/reports/bound", single.url, uri=single.url + "/reports/other"
    )
    r = await get(single, "/reports/bound", other_path)
    assert (r.status_code, reason(r)) == (402, "invalid_siwx_uri_mismatch")
    r = await get(
        single, "/reports/bound", await proof(single, payer, "/reports/bound", single.url)
    )
    assert r.status_code == 200, r.text


async def test_the_sdk_client_will_not_sign_for_another_origin(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    """With public_url naming another host, the challenge is for that host: the SDK's client
    refuses to sign it, so it pays instead (a gateway behind the wrong public_url never signs
    anyone in)."""
    cfg = {**_config(chain, origin, pay_to, facilitator_url, "memory"), "public_url": PUBLIC_URL}
    gw = GatewayProcess(cfg, tmp_path).start()
    try:
        payer = make_payer()
        txs = chain.tx_count(chain.facilitator_address)
        async with siwx_payer(chain, payer) as http:
            for _ in range(2):
                r = await http.get(gw.url + "/reports/elsewhere")
                assert r.status_code == 200, r.text
                assert "PAYMENT-RESPONSE" in r.headers
        assert chain.tx_count(chain.facilitator_address) == txs + 2
    finally:
        gw.stop()


# --- counted, logged and rate-limited as a paid call --------------------------------------

CLIENT_IP = "203.0.113.7"  # the client a trusted proxy (127.0.0.1) names in X-Forwarded-For
PER_IP = 4


def _metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _access_lines(gw: GatewayProcess, path: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("logger") == "gateway.access" and e.get("path") == path]


def _access_lines_until(
    gw: GatewayProcess, path: str, last: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The access lines of `path` once one matches `last` (a line is written after its
    response's last byte, so it may come a moment after the client has the response)."""
    deadline = time.monotonic() + 10
    while True:
        lines = _access_lines(gw, path)
        if any(last(e) for e in lines):
            return lines
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)


async def _proof_from(gw: GatewayProcess, account: LocalAccount, path: str, ip: str) -> str:
    """A SIWX proof for a challenge fetched as client `ip` (each its own rate bucket)."""
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(gw.url + path, headers={"X-Forwarded-For": ip})
    assert r.status_code == 402, r.text
    siwx = (payment_required_of(r.headers, r.content).extensions or {})[SIGN_IN_WITH_X]
    chain = siwx["supportedChains"][0]
    info = {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"]}
    return encode_siwx_header(
        await create_siwx_payload(info, EthAccountSigner(account), gw.url + path)
    )


async def test_sign_ins_are_counted_logged_and_share_the_ip_rate_with_paid_calls(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    cfg = {
        **_config(chain, origin, pay_to, facilitator_url, "memory"),
        "limits": {"per_ip": f"{PER_IP}/m"},
        "trusted_proxies": ["127.0.0.1"],
    }
    gw = GatewayProcess(cfg, tmp_path)
    _with_public_url(gw, gw.url).start()
    try:
        payer, other = make_payer(), make_payer()
        path = "/reports/limited"
        await pay_once(chain, gw, payer, path)  # as 127.0.0.1: a bucket of its own
        calls, txs = len(origin.log.for_path(path)), chain.tx_count(chain.facilitator_address)
        as_client = {"X-Forwarded-For": CLIENT_IP}
        async with httpx.AsyncClient(timeout=30) as http:
            for i in range(PER_IP):
                proof = await _proof_from(gw, payer, path, f"198.51.100.{i + 1}")
                r = await http.get(gw.url + path, headers={**as_client, SIGN_IN_WITH_X: proof})
                assert r.status_code == 200, r.text
            # Over the client's rate: a sign-in is refused before its proof is read...
            proof = await _proof_from(gw, payer, path, "198.51.100.99")
            over = await http.get(gw.url + path, headers={**as_client, SIGN_IN_WITH_X: proof})
            assert over.status_code == 429 and over.headers["Retry-After"]
            # ... and so is a paid call from that client: one bucket for both.
            unpaid = await http.get(
                gw.url + "/paid/x", headers={"X-Forwarded-For": "198.51.100.98"}
            )
            client = make_x402_client(other, [(chain.network, chain.token)])
            headers, _ = await pay_challenge(client, unpaid.headers, unpaid.content)
            paid = await http.get(gw.url + "/paid/x", headers={**as_client, **headers})
            assert paid.status_code == 429
            # Another client is not held back; a proof used twice is refused and counted.
            elsewhere = {"X-Forwarded-For": "198.51.100.97", SIGN_IN_WITH_X: proof}
            assert (await http.get(gw.url + path, headers=elsewhere)).status_code == 200
            again = await http.get(gw.url + path, headers=elsewhere)
            assert (again.status_code, reason(again)) == (402, "siwx_nonce_used")
        assert len(origin.log.for_path(path)) == calls + PER_IP + 1
        assert chain.tx_count(chain.facilitator_address) == txs
        assert (
            _metric(gw, "x402_gateway_sign_ins_total", route="/reports/*", outcome="signed_in")
            == PER_IP + 1
        )
        assert (
            _metric(gw, "x402_gateway_sign_ins_total", outcome="refused", reason="siwx_nonce_used")
            == 1
        )
        lines = _access_lines_until(
            gw, path, lambda e: e.get("sign_in_reason") == "siwx_nonce_used"
        )
        signed = [e for e in lines if e.get("sign_in") == "signed_in"]
        assert len(signed) == PER_IP + 1
        assert {e["payer"].lower() for e in signed} == {payer.address.lower()}
        assert all("payment" not in e for e in signed)
        refused = [e for e in lines if e.get("sign_in") == "refused"]
        assert [e["sign_in_reason"] for e in refused][-1] == "siwx_nonce_used"
        assert [e["status"] for e in lines if e["status"] == 429] == [429]
    finally:
        gw.stop()


# --- two replicas, one redis --------------------------------------------------------------


async def test_replicas_share_payments_and_nonces_in_redis(
    replicas: tuple[GatewayProcess, GatewayProcess],
    origin: Origin,
    chain: Chain,
    make_payer: Callable[..., LocalAccount],
) -> None:
    one, two = replicas
    payer = make_payer()
    path = "/reports/shared"
    # Paid at one replica (the SDK's client cannot sign for api.example.com: it pays)...
    await pay_once(chain, one, payer, path)
    txs = chain.tx_count(chain.facilitator_address)
    # ... signed in at the other, as a client behind the balancer would.
    header = await proof(two, payer, path, PUBLIC_URL + path)
    r = await get(two, path, header)
    assert r.status_code == 200, r.text
    assert r.json()["payer"].lower() == payer.address.lower()
    r = await get(one, path, header)  # the nonce is spent for every replica
    assert (r.status_code, reason(r)) == (402, "siwx_nonce_used")
    # One proof sent 20 times at once to both replicas signs in once.
    header = await proof(one, payer, path, PUBLIC_URL + path)
    calls = len(origin.log.for_path(path))
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as http:
        answers = await asyncio.gather(
            *(
                http.get((one, two)[i % 2].url + path, headers={SIGN_IN_WITH_X: header})
                for i in range(20)
            )
        )
    assert sorted(a.status_code for a in answers) == [200] + [402] * 19
    assert len(origin.log.for_path(path)) == calls + 1
    assert chain.tx_count(chain.facilitator_address) == txs


# --- the TypeScript SDK's client ----------------------------------------------------------

JS = Path(__file__).parent / "js" / "siwx_fetch.mjs"


def node_siwx(url: str, count: int, key: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/setup.sh installs the npm tools)")
    done = subprocess.run(
        [node, str(JS), url, str(count)],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
        cwd=JS.parents[3],  # the repository: node_modules is there
        env={**os.environ, "X402_PAYER_KEY": "0x" + key.removeprefix("0x")},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def test_the_typescript_sdk_signs_in_after_paying_once(
    single: GatewayProcess,
    chain: Chain,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer, stranger = make_payer(), make_payer()
    await pay_once(chain, single, payer, "/reports/ts")
    txs = chain.tx_count(chain.facilitator_address)
    signed = node_siwx(single.url + "/reports/ts", 10, payer.key.hex())
    assert signed["address"].lower() == payer.address.lower()
    assert signed["statuses"] == [200] * 10, signed
    assert {p.lower() for p in signed["payers"]} == {payer.address.lower()}
    assert signed["receipts"] == 0
    # A wallet that never paid signs too, and is refused: the 402 is what it gets back.
    refused = node_siwx(single.url + "/reports/ts", 1, stranger.key.hex())
    assert refused["statuses"] == [402], refused
    assert chain.tx_count(chain.facilitator_address) == txs
