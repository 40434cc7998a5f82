"""The engine served over HTTP (`service.py`), spoken to by the SDK's `HTTPFacilitatorClient`
and by the gateway's own `RemoteFacilitator`, settling real payments on the session chain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from x402.http import AuthHeaders, FacilitatorConfig, HTTPFacilitatorClient
from x402.mechanisms.evm.constants import ERR_INSUFFICIENT_BALANCE

from gateway.config.settings import RemoteFacilitatorSettings
from gateway.demo import chain as chainlib
from gateway.facilitators.engine import EngineFacilitator, run
from gateway.facilitators.remote import RemoteFacilitator
from tests.e2e import engine_parts as parts
from tests.e2e.conftest import Chain

pytestmark = pytest.mark.e2e
AMOUNT = 1000
TOKEN = "test-bearer-token"


class Bearer:
    """The SDK's AuthProvider for a bearer token on every endpoint."""

    def __init__(self, token: str) -> None:
        self._headers = {"Authorization": f"Bearer {token}"}

    def get_auth_headers(self) -> AuthHeaders:
        return AuthHeaders(verify=self._headers, settle=self._headers, supported=self._headers)


@pytest.fixture(scope="module")
def keys(chain: Chain) -> tuple[str, ...]:
    return parts.settler_keys(chain.rpc_url, 1)


@contextlib.asynccontextmanager
async def service(
    chain: Chain, keys: tuple[str, ...]
) -> AsyncIterator[tuple[str, EngineFacilitator]]:
    engine = EngineFacilitator(parts.options(chain.rpc_url, keys))
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(
        run(engine, port=0, token=TOKEN, on_listening=urls.append, stop=stop, handle_signals=False)
    )
    try:
        for _ in range(400):
            if urls or task.done():
                break
            await asyncio.sleep(0.025)
        assert urls, "the facilitator service did not start"
        yield urls[0], engine
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_the_sdks_http_facilitator_client_settles_through_it(
    chain: Chain, keys: tuple[str, ...]
) -> None:
    pay_to = str(chainlib.new_account().address)
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    (payment,) = await parts.fresh_payments(chain.local, req, 1)
    async with service(chain, keys) as (url, _):
        client = HTTPFacilitatorClient(FacilitatorConfig(url=url, auth_provider=Bearer(TOKEN)))
        try:
            supported = await asyncio.to_thread(client.get_supported)
            assert (2, "exact", chain.network) in {
                (k.x402_version, k.scheme, k.network) for k in supported.kinds
            }
            verified = await client.verify(payment, req)
            assert verified.is_valid and verified.payer == payment.payload["authorization"]["from"]
            settled = await client.settle(payment, req)
        finally:
            await client.aclose()
        intruder = HTTPFacilitatorClient(FacilitatorConfig(url=url, auth_provider=Bearer("no")))
        try:
            with pytest.raises(ValueError, match="401"):
                await intruder.settle(payment, req)
        finally:
            await intruder.aclose()
    assert settled.success
    parts.assert_settled_exactly(chain.local, pay_to, [payment], [settled], AMOUNT)


async def test_gateway_replicas_share_one_settler_through_it(
    chain: Chain, keys: tuple[str, ...]
) -> None:
    pay_to = str(chainlib.new_account().address)
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    payments = await parts.fresh_payments(chain.local, req, 12)
    broke = await parts.fresh_payments(chain.local, req, 1, balance=1)
    settler = parts.address_of(keys[0])
    sent_before = chain.tx_count(settler)
    async with service(chain, keys) as (url, engine):
        endpoint = RemoteFacilitatorSettings(
            url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        replicas = [RemoteFacilitator([endpoint]), RemoteFacilitator([endpoint])]
        for replica in replicas:
            await replica.start()
        try:
            assert [await r.refresh_supported() for r in replicas] == [[], []]
            await replicas[0].ping()
            assert (await replicas[1].verify(payments[0], req)).is_valid
            results = await asyncio.gather(
                *(replicas[i % 2].settle(p, req) for i, p in enumerate(payments))
            )
            refused = await replicas[0].settle(broke[0], req)
        finally:
            for replica in replicas:
                await replica.close()
        assert engine.stats.transactions == 12
    assert all(r.success for r in results)
    assert (refused.success, refused.error_reason) == (False, ERR_INSUFFICIENT_BALANCE)
    # One settler, one nonce sequence: both replicas' payments in 12 of its transactions.
    assert chain.tx_count(settler) - sent_before == 12
    parts.assert_settled_exactly(
        chain.local, pay_to, [*payments, *broke], [*results, refused], AMOUNT
    )
