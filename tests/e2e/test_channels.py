"""Payment channels (batch-settlement, issue 14) through real gateways: two `x402-gateway`
processes sharing one real redis-server, anvil with the x402 contracts, the SDK facilitator
over HTTP (deposits), and the SDK's own Python batch-settlement client paying over HTTP.
Nothing is mocked; the money is counted on chain and in the channel state in Redis.

The gateways hold their own receiver authorizer (`channels.authorizer_key`, a fresh key that
never sends a transaction), so the only transactions on chain during a test are deposits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from x402 import x402Client
from x402.client_base import prefer_scheme
from x402.http.clients.httpx import x402HttpxClient
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.mechanisms.evm.batch_settlement import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.batch_settlement.client.scheme import (
    BatchSettlementEvmScheme as BatchSettlementClientScheme,
)
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CUMULATIVE_EXCEEDS_BALANCE,
    ERR_INVALID_VOUCHER_SIGNATURE,
    ERR_RECEIVER_MISMATCH,
)
from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC
from x402.schemas import PaymentPayload, PaymentRequired

from gateway.demo import chain as chainlib
from gateway.demo import x402_sdk as sdk
from gateway.store.channels import RedisChannelStorage
from tests.e2e import engine_parts
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import gateway_config
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway
from tests.procs import RedisServer, stop

pytestmark = pytest.mark.e2e

BATCH = "batch-settlement"
PRICE = 1_000  # $0.001 in the test USDC (6 decimals)
DEAR = 100_000  # $0.10
CALLS = 200
COPIES = 50


@pytest.fixture(scope="module")
def authorizer() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


@pytest.fixture(scope="module")
def replicas(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    authorizer: LocalAccount,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("channels")
    facilitator = {"url": facilitator_url, "timeout": "10s"}
    routes = [
        {"path": "/paid/*", "price": "$0.001", "channel": {"min_deposit": "$0.25"}},
        {"path": "/dear/*", "price": "$0.10", "channel": {"min_deposit": "$0.10"}},
    ]
    channels = {"withdraw_delay": "15m", "authorizer_key": "${CHANNEL_AUTHORIZER_KEY}"}
    cfg = gateway_config(
        chain, origin.url, pay_to, facilitator, redis.url, routes=routes, channels=channels
    )
    env = {"CHANNEL_AUTHORIZER_KEY": "0x" + bytes(authorizer.key).hex()}
    one, two = GatewayProcess(cfg, tmp, env=env), GatewayProcess(cfg, tmp, env=env)
    try:
        one.start(ready=False)
        two.start(ready=False)
        one.wait_ready()
        two.wait_ready()
        yield one, two
    finally:
        one.stop()
        two.stop()


def channel_client(chain: Chain, payer: LocalAccount) -> x402Client:
    """The SDK's payer client, choosing batch-settlement where a 402 offers it."""
    client = sdk.make_payer_client(payer, chain.rpc_url, [(chain.network, chain.token)])
    client.register_policy(prefer_scheme(BATCH))
    return client


def txs_in_blocks(rpc_url: str, first: int, last: int) -> list[dict[str, Any]]:
    """Every transaction mined in blocks first..last (anvil: one per block, automine)."""
    found: list[dict[str, Any]] = []
    for number in range(first, last + 1):
        block = chainlib.rpc_call(rpc_url, "eth_getBlockByNumber", [hex(number), True])
        found += block["transactions"]
    return found


def payment_required(response: httpx.Response) -> PaymentRequired:
    decoded = decode_payment_required_header(response.headers["PAYMENT-REQUIRED"])
    assert isinstance(decoded, PaymentRequired)
    return decoded


def header_of(payload: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


def channel_state(redis: RedisServer, channel_id: str) -> Any:
    storage = RedisChannelStorage(redis.url)
    try:
        return storage.get(channel_id)
    finally:
        storage.close()


async def test_one_deposit_then_two_hundred_calls_on_vouchers(
    replicas: tuple[GatewayProcess, GatewayProcess],
    chain: Chain,
    origin: Origin,
    pay_to: str,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer(1_000_000)
    client = channel_client(chain, payer)
    start = chainlib.block_number(chain.rpc_url)
    escrow = chain.balance_of(BATCH_SETTLEMENT_ADDRESS)
    statuses: list[int] = []
    kinds: list[str] = []
    async with x402HttpxClient(client, timeout=30) as http:
        for i in range(CALLS):
            gw = replicas[i % 2]  # the channel's state is in Redis: either replica serves it
            answer = await http.get(f"{gw.url}/paid/infer-{i}")
            statuses.append(answer.status_code)
            receipt = decode_payment_response_header(answer.headers["PAYMENT-RESPONSE"])
            kinds.append("deposit" if receipt.transaction else "voucher")
            assert answer.json()["payer"] == payer.address
    end = chainlib.block_number(chain.rpc_url)

    assert statuses == [200] * CALLS
    assert kinds == ["deposit"] + ["voucher"] * (CALLS - 1)
    mined = txs_in_blocks(chain.rpc_url, start + 1, end)
    assert len(mined) == 1, mined  # the deposit; 199 vouchers moved nothing on chain
    assert to_checksum_address(mined[0]["to"]) in (
        BATCH_SETTLEMENT_ADDRESS,
        ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    )
    deposit = 250_000  # the route's min_deposit, as the SDK client deposits it
    assert chain.balance_of(payer.address) == 1_000_000 - deposit
    assert chain.balance_of(BATCH_SETTLEMENT_ADDRESS) == escrow + deposit
    assert chain.balance_of(pay_to) == 0  # paid when the vouchers are claimed (chclaim)
    served = [c for c in origin.log.calls if c["path"].startswith("/paid/infer-")]
    assert len(served) == CALLS
    assert {c["headers"]["X-Payer"] for c in served} == {payer.address}

    storage = RedisChannelStorage(redis.url)
    try:
        (channel,) = [
            c for c in storage.list() if c.channel_config.payer.lower() == payer.address.lower()
        ]
    finally:
        storage.close()
    assert int(channel.charged_cumulative_amount) == CALLS * PRICE
    assert int(channel.signed_max_claimable) == CALLS * PRICE
    assert int(channel.balance) == deposit
    assert channel.pending_request is None
    # every voucher after the deposit took the fast path (checked and charged on the loop)
    lines = [
        r
        for gw in replicas
        for r in (json.loads(x) for x in gw.logs().splitlines() if x.startswith("{"))
        if r.get("event") == "request" and str(r.get("path", "")).startswith("/paid/infer-")
    ]
    assert sum(r.get("voucher") == "fast" for r in lines) == CALLS - 1


async def _open_channel(
    gw: GatewayProcess, client: x402Client, path: str
) -> tuple[httpx.Response, PaymentRequired]:
    """One paid call (the deposit), then the 402 the next call would pay."""
    async with x402HttpxClient(client, timeout=30) as http:
        first = await http.get(gw.url + path)
    assert first.status_code == 200, first.text
    async with httpx.AsyncClient(timeout=30) as http:
        challenge = await http.get(gw.url + path)
    assert challenge.status_code == 402
    return first, payment_required(challenge)


async def test_fifty_copies_of_one_voucher_on_two_replicas_buy_one_response(
    replicas: tuple[GatewayProcess, GatewayProcess],
    chain: Chain,
    origin: Origin,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer(1_000_000)
    client = channel_client(chain, payer)
    _, required = await _open_channel(replicas[0], client, "/paid/copies-open")
    payload = await client.create_payment_payload(required)
    assert isinstance(payload, PaymentPayload) and payload.payload["type"] == "voucher"
    channel_id = payload.payload["voucher"]["channelId"]
    before = channel_state(redis, channel_id)
    assert int(before.charged_cumulative_amount) == PRICE
    header = {"PAYMENT-SIGNATURE": header_of(payload.model_dump(by_alias=True, mode="json"))}
    start = chainlib.block_number(chain.rpc_url)

    limits = httpx.Limits(max_connections=COPIES)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        answers = await asyncio.gather(
            *(http.get(f"{replicas[i % 2].url}/paid/copies", headers=header) for i in range(COPIES))
        )

    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 1, [(a.status_code, a.text[:200]) for a in answers]
    assert set(statuses) <= {200, 402, 409}, statuses
    assert len(origin.log.for_path("/paid/copies")) == 1
    after = channel_state(redis, channel_id)
    assert int(after.charged_cumulative_amount) == 2 * PRICE  # charged once
    assert after.pending_request is None
    assert chainlib.block_number(chain.rpc_url) == start  # vouchers: no transaction


async def test_an_overspent_or_forged_voucher_is_refused_and_nothing_is_served(
    replicas: tuple[GatewayProcess, GatewayProcess],
    chain: Chain,
    origin: Origin,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer(1_000_000)
    client = channel_client(chain, payer)
    gw = replicas[1]
    # A $0.10 call on a $0.10 deposit: the channel is exactly spent.
    _, required = await _open_channel(gw, client, "/dear/open")
    payload = await client.create_payment_payload(required)
    assert payload.payload["type"] == "deposit"  # the client would top up: we do not let it
    config = payload.payload["channelConfig"]
    channel_id = payload.payload["voucher"]["channelId"]
    spent = channel_state(redis, channel_id)
    assert (int(spent.balance), int(spent.charged_cumulative_amount)) == (DEAR, DEAR)

    def voucher(signer: LocalAccount, amount: int, cfg: dict[str, Any]) -> dict[str, str]:
        fields = sign_voucher(EthAccountSigner(signer), channel_id, amount, chain.network)
        raw = {"type": "voucher", "channelConfig": cfg, "voucher": fields.to_dict()}
        paid = payload.model_copy(update={"payload": raw})
        return {"PAYMENT-SIGNATURE": header_of(paid.model_dump(by_alias=True, mode="json"))}

    stranger: LocalAccount = Account.create()
    cases = [
        ("overspent", voucher(payer, 2 * DEAR, config), ERR_CUMULATIVE_EXCEEDS_BALANCE),
        ("forged", voucher(stranger, 2 * DEAR, config), ERR_INVALID_VOUCHER_SIGNATURE),
        (
            "another receiver",
            voucher(payer, 2 * DEAR, {**config, "receiver": stranger.address}),
            ERR_RECEIVER_MISMATCH,
        ),
    ]
    start = chainlib.block_number(chain.rpc_url)
    async with httpx.AsyncClient(timeout=30) as http:
        for name, headers, reason in cases:
            answer = await http.get(f"{gw.url}/dear/refused", headers=headers)
            assert answer.status_code == 402, (name, answer.text)
            assert payment_required(answer).error == reason, name
            assert "PAYMENT-RESPONSE" not in answer.headers, name
    assert origin.log.for_path("/dear/refused") == []
    after = channel_state(redis, channel_id)
    assert int(after.charged_cumulative_amount) == DEAR
    assert after.pending_request is None
    assert chainlib.block_number(chain.rpc_url) == start


async def test_a_client_that_lost_its_channel_state_recovers_from_the_corrective_402(
    replicas: tuple[GatewayProcess, GatewayProcess],
    chain: Chain,
    origin: Origin,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer(1_000_000)
    async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
        for i in range(3):
            assert (await http.get(f"{replicas[0].url}/paid/before-{i}")).status_code == 200
    start = chainlib.block_number(chain.rpc_url)

    # The same wallet, its channel state gone (a restart): it signs a voucher from what the
    # chain says (nothing claimed yet), the gateway answers the corrective 402 with the
    # channel's state and its last voucher, and the SDK's client resyncs and pays again.
    fresh = channel_client(chain, payer)
    async with x402HttpxClient(fresh, timeout=30) as http:
        answer = await http.get(f"{replicas[1].url}/paid/after-restart")
        assert answer.status_code == 200, answer.text
        again = await http.get(f"{replicas[0].url}/paid/after-restart-2")
        assert again.status_code == 200, again.text

    assert chainlib.block_number(chain.rpc_url) == start  # no second deposit
    assert len(origin.log.for_path("/paid/after-restart")) == 1
    receipt = decode_payment_response_header(answer.headers["PAYMENT-RESPONSE"])
    assert receipt.extra is not None
    assert receipt.extra["channelState"]["chargedCumulativeAmount"] == str(4 * PRICE)
    storage = RedisChannelStorage(redis.url)
    try:
        (channel,) = [
            c for c in storage.list() if c.channel_config.payer.lower() == payer.address.lower()
        ]
    finally:
        storage.close()
    assert int(channel.charged_cumulative_amount) == 5 * PRICE  # 5 served, 5 charged


@contextlib.contextmanager
def facilitator_process(chain: Chain, key: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m gateway.demo.facilitator_server` of its own (this test stops it)."""
    env = {**os.environ, "CHANNELS_TEST_FACILITATOR_KEY": key}
    argv = [sys.executable, "-m", "gateway.demo.facilitator_server", "--rpc-url", chain.rpc_url]
    argv += ["--private-key-env", "CHANNELS_TEST_FACILITATOR_KEY", "--port", "0"]
    argv += ["--network", chain.network]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # `{"listening": URL}` once it accepts connections
        assert line, "the facilitator did not start"
        yield json.loads(line)["listening"], proc
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_vouchers_need_no_facilitator_once_the_channel_is_open(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    """A memory store (the SDK's in-memory channel storage), the facilitator's own receiver
    authorizer (from its /supported), and the facilitator stopped after the deposit: every
    voucher is still verified and settled, in the gateway alone."""
    settler = chainlib.new_account()
    chainlib.fund_eth(chain.rpc_url, chain.owner_key, settler.address, 10**18)
    with facilitator_process(chain, "0x" + bytes(settler.key).hex()) as (url, proc):
        routes = [{"path": "/paid/*", "price": "$0.001", "channel": {"min_deposit": "$0.05"}}]
        facilitator = {"url": url, "timeout": "5s"}
        cfg = gateway_config(chain, origin.url, pay_to, facilitator, "memory", routes=routes)
        payer = make_payer(1_000_000)
        with gateway(cfg, tmp_path) as gw:
            async with httpx.AsyncClient() as plain:
                offer = payment_required(await plain.get(gw.url + "/paid/solo-402")).accepts
            assert offer[1].extra["receiverAuthorizer"] == settler.address  # the facilitator's
            async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
                first = await http.get(gw.url + "/paid/solo-0")
                assert first.status_code == 200, first.text
                stop(proc)  # no facilitator from here on
                start = chainlib.block_number(chain.rpc_url)
                later = [await http.get(f"{gw.url}/paid/solo-{i}") for i in range(1, 21)]
    assert [a.status_code for a in later] == [200] * 20, [a.text[:200] for a in later]
    assert chainlib.block_number(chain.rpc_url) == start
    assert chainlib.tx_count(chain.rpc_url, settler.address) == 1  # the deposit
    assert chain.balance_of(payer.address) == 1_000_000 - 50_000


async def test_deposits_through_the_settlement_engines_sdk_delegate(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    make_payer: Callable[..., LocalAccount],
    tmp_path: Path,
) -> None:
    """`facilitator: {local: ...}`: the engine settles exact payments itself; a channel
    deposit goes to its SDK delegate, whose key is also the advertised receiver authorizer."""
    settler, delegate = engine_parts.settler_keys(chain.rpc_url, 2)
    local = {"rpc_url": chain.rpc_url, "private_key": "${SETTLER}", "delegate_key": "${DELEGATE}"}
    routes = [{"path": "/paid/*", "price": "$0.001", "channel": {"min_deposit": "$0.05"}}]
    cfg = gateway_config(chain, origin.url, pay_to, {"local": local}, "memory", routes=routes)
    env = {"SETTLER": settler, "DELEGATE": delegate}
    payer = make_payer(1_000_000)
    with gateway(cfg, tmp_path, env=env) as gw:
        async with x402HttpxClient(channel_client(chain, payer), timeout=30) as http:
            answers = [await http.get(f"{gw.url}/paid/engine-{i}") for i in range(10)]
    assert [a.status_code for a in answers] == [200] * 10, [a.text[:200] for a in answers]
    receipts = [decode_payment_response_header(a.headers["PAYMENT-RESPONSE"]) for a in answers]
    assert [bool(r.transaction) for r in receipts] == [True] + [False] * 9
    assert chainlib.tx_count(chain.rpc_url, engine_parts.address_of(delegate)) == 1
    assert chainlib.tx_count(chain.rpc_url, engine_parts.address_of(settler)) == 0
    assert chain.balance_of(payer.address) == 1_000_000 - 50_000


NODE_CHANNEL = Path(__file__).with_name("node") / "channel.mjs"


def node_channel(prefix: str, calls: int, key: str, chain: Chain) -> dict[str, Any]:
    """`calls` paid GETs by `tests/e2e/node/channel.mjs` (skips without node or packages)."""
    root = Path(__file__).resolve().parents[2]
    if shutil.which("node") is None or not (root / "node_modules/@x402/evm").is_dir():
        pytest.skip("node or @x402/evm missing: run scripts/setup.sh --test")
    argv = ["node", str(NODE_CHANNEL), prefix, str(calls), chain.network, chain.token]
    argv.append(chain.rpc_url)
    env = {**os.environ, "X402_PAYER_KEY": "0x" + key.removeprefix("0x")}  # never in argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False, env=env)
    assert done.stdout.strip(), done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def test_the_typescript_batch_settlement_client_pays_through_a_channel(
    replicas: tuple[GatewayProcess, GatewayProcess],
    chain: Chain,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer(1_000_000)
    start = chainlib.block_number(chain.rpc_url)
    prefix = f"{replicas[0].url}/paid/ts-"
    result = await asyncio.to_thread(node_channel, prefix, 20, bytes(payer.key).hex(), chain)
    assert result.get("statuses") == [200] * 20, result
    assert [bool(tx) for tx in result["transactions"]] == [True] + [False] * 19, result
    assert set(result["payers"]) == {payer.address}
    assert len(txs_in_blocks(chain.rpc_url, start + 1, chainlib.block_number(chain.rpc_url))) == 1
    assert chain.balance_of(payer.address) == 1_000_000 - 250_000


async def test_a_payer_closes_its_channel_with_the_sdks_cooperative_refund(
    replicas: tuple[GatewayProcess, GatewayProcess],
    chain: Chain,
    origin: Origin,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer(1_000_000)
    scheme = BatchSettlementClientScheme(EthAccountSignerWithRPC(payer, chain.rpc_url))
    client = x402Client().register("eip155:*", scheme)
    client.set_spend_controls(
        {"allowed_assets": [{"network": chain.network, "asset": chain.token}]}
    )
    async with x402HttpxClient(client, timeout=30) as http:
        for i in range(5):
            assert (await http.get(f"{replicas[i % 2].url}/paid/closing-{i}")).status_code == 200
    assert chain.balance_of(payer.address) == 1_000_000 - 250_000
    start = chainlib.block_number(chain.rpc_url)
    served_before = len(origin.log.calls)

    # The SDK's own refund: a 402 probe, then a refund voucher for what was charged; the
    # gateway answers it itself (never the origin) once the facilitator sent the refund.
    url = f"{replicas[1].url}/paid/closing-refund"
    settled = await asyncio.to_thread(scheme.refund, url)

    assert settled.success and settled.transaction, settled
    mined = txs_in_blocks(chain.rpc_url, start + 1, chainlib.block_number(chain.rpc_url))
    assert [tx["hash"] for tx in mined] == [settled.transaction]
    assert chain.balance_of(payer.address) == 1_000_000 - 5 * PRICE  # the rest came back
    assert len(origin.log.calls) == served_before
    storage = RedisChannelStorage(redis.url)
    try:
        mine = [
            c for c in storage.list() if c.channel_config.payer.lower() == payer.address.lower()
        ]
    finally:
        storage.close()
    assert mine == []  # drained: the channel's record is gone


async def test_a_voucher_the_origin_failed_is_not_charged_and_buys_the_next_call(
    replicas: tuple[GatewayProcess, GatewayProcess],
    chain: Chain,
    origin: Origin,
    redis: RedisServer,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer(1_000_000)
    client = channel_client(chain, payer)
    _, required = await _open_channel(replicas[0], client, "/paid/failing-open")
    payload = await client.create_payment_payload(required)
    channel_id = payload.payload["voucher"]["channelId"]
    header = {"PAYMENT-SIGNATURE": header_of(payload.model_dump(by_alias=True, mode="json"))}
    async with httpx.AsyncClient(timeout=30) as http:
        failed = await http.get(f"{replicas[0].url}/paid/fail", headers=header)
        assert failed.status_code == 500  # the origin's own answer, relayed
        assert "PAYMENT-RESPONSE" not in failed.headers
        unchanged = channel_state(redis, channel_id)
        assert int(unchanged.charged_cumulative_amount) == PRICE  # nothing charged
        assert unchanged.pending_request is None  # the channel is free again
        # the same voucher, on the other replica: it buys a response
        served = await http.get(f"{replicas[1].url}/paid/after-fail", headers=header)
    assert served.status_code == 200, served.text
    assert int(channel_state(redis, channel_id).charged_cumulative_amount) == 2 * PRICE
