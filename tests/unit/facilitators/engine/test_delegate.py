"""The delegate seam: a synchronous SDK facilitator, off the event loop, failing closed."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
from x402.schemas import SchemeNotFoundError, SettleResponse, SupportedResponse, VerifyResponse

from gateway.demo.chain import free_port
from gateway.errors import FacilitatorUnavailable
from gateway.facilitators.engine import ThreadDelegate
from tests.unit.facilitators.engine.helpers import NETWORK, account, requirements, sdk_signed


class FakeSync:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.threads: list[str] = []

    def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        self.threads.append(threading.current_thread().name)
        if self.fail is not None:
            raise self.fail
        return VerifyResponse(is_valid=True)

    def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        self.threads.append(threading.current_thread().name)
        if self.fail is not None:
            raise self.fail
        return SettleResponse(success=True, transaction="0x01", network=requirements.network)

    def get_supported(self) -> SupportedResponse:
        return SupportedResponse(kinds=[])


async def test_calls_run_in_the_pool_not_on_the_loop() -> None:
    inner = FakeSync()
    delegate = ThreadDelegate(inner)
    payment, req = sdk_signed(account()), requirements()
    with pytest.raises(RuntimeError, match="start"):
        await delegate.verify(payment, req)
    await delegate.start()
    try:
        assert (await delegate.verify(payment, req)).is_valid
        assert (await delegate.settle(payment, req)).success
    finally:
        await delegate.close()
    assert all(name.startswith("x402-delegate") for name in inner.threads) and inner.threads


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (SchemeNotFoundError("upto", NETWORK), "unsupported"),
        (requests.ConnectionError("refused"), FacilitatorUnavailable),
        (KeyError("a bug"), KeyError),
    ],
)
async def test_failures(fail: BaseException, expected: Any) -> None:
    delegate = ThreadDelegate(FakeSync(fail))
    await delegate.start()
    try:
        payment, req = sdk_signed(account()), requirements()
        if expected == "unsupported":
            verified = await delegate.verify(payment, req)
            settled = await delegate.settle(payment, req)
            assert (verified.invalid_reason, settled.error_reason) == ("unsupported_scheme",) * 2
            assert settled.transaction == ""
        else:
            with pytest.raises(expected):
                await delegate.settle(payment, req)
    finally:
        await delegate.close()


def test_the_sdks_exact_facilitator_is_one_call_away() -> None:
    delegate = ThreadDelegate.sdk_exact(
        f"http://127.0.0.1:{free_port()}", "0x" + "33" * 32, [NETWORK]
    )
    kinds = {(k.x402_version, k.network) for k in delegate.get_supported().kinds}
    assert (2, NETWORK) in kinds and (1, "base-sepolia") in kinds


def test_the_delegate_takes_channel_deposits_with_a_receiver_authorizer() -> None:
    from eth_account import Account

    own, gateway_key = "0x" + "33" * 32, "0x" + "44" * 32
    for authorizer, expected in ((None, own), (gateway_key, gateway_key)):
        delegate = ThreadDelegate.sdk_exact(
            f"http://127.0.0.1:{free_port()}", own, [NETWORK], authorizer
        )
        (kind,) = [k for k in delegate.get_supported().kinds if k.scheme == "batch-settlement"]
        assert kind.network == NETWORK
        assert kind.extra == {"receiverAuthorizer": Account.from_key(expected).address}
