"""Real payment parts for the end-to-end tests, all on loopback.

Once per session: anvil (a real JSON-RPC node), the test USDC deployed on it, and the SDK's
facilitator served over HTTP by `gateway.demo.facilitator_server` in its own process.
Per test: fresh payer accounts holding test USDC (never shared, so never a nonce clash),
and the SDK's paying client for them.

Keys: anvil #0 owns the token (mints), #1 signs the HTTP facilitator's settlements, #2
signs those of the in-process `local_facilitator`; nothing else sends from them, so their
transaction counts are exactly the settlements broadcast.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO

import pytest
from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.schemas import PaymentRequirements
from x402.schemas.v1 import PaymentRequirementsV1

from gateway.demo import chain as chainlib
from gateway.demo.payer import make_x402_client
from gateway.facilitators.local import LocalFacilitator
from tests.e2e.gateway_proc import Origin
from tests.procs import stop

DEFAULT_PAYER_BALANCE = 10_000_000  # 10 test USDC
PAY_TO = "0x000000000000000000000000000000000000dEaD"


@dataclass(frozen=True)
class Chain:
    """The session's chain: an anvil process, the token on it, and the roles' keys."""

    anvil: chainlib.Anvil
    local: chainlib.LocalChain
    local_facilitator_key: str = chainlib.ANVIL_KEYS[2]

    @property
    def rpc_url(self) -> str:
        return self.local.rpc_url

    @property
    def token(self) -> str:
        return self.local.token

    @property
    def network(self) -> str:
        return self.local.network

    @property
    def owner_key(self) -> str:
        return self.local.owner_key

    @property
    def facilitator_key(self) -> str:
        return self.local.facilitator_key

    @property
    def facilitator_address(self) -> str:
        return self.local.facilitator_address

    def balance_of(self, address: str) -> int:
        return self.local.balance_of(address)

    def tx_count(self, address: str) -> int:
        return chainlib.tx_count(self.rpc_url, address)

    def authorization_state(self, payer: str, nonce: str) -> bool:
        return chainlib.authorization_state(self.rpc_url, self.token, payer, nonce)

    def requirements(
        self, amount: int = 1000, pay_to: str = PAY_TO, max_timeout_seconds: int = 300
    ) -> PaymentRequirements:
        """v2 `exact` requirements in this chain's test USDC."""
        return PaymentRequirements(
            scheme="exact",
            network=self.network,
            asset=self.token,
            amount=str(amount),
            pay_to=pay_to,
            max_timeout_seconds=max_timeout_seconds,
            extra={"name": "USD Coin", "version": "2"},
        )

    def requirements_v1(
        self, amount: int = 1000, pay_to: str = PAY_TO, resource: str = "http://local/paid"
    ) -> PaymentRequirementsV1:
        """The same, in v1 shape (`base-sepolia`, `maxAmountRequired`)."""
        return PaymentRequirementsV1(
            scheme="exact",
            network="base-sepolia",
            max_amount_required=str(amount),
            resource=resource,
            description="test",
            mime_type="application/json",
            pay_to=pay_to,
            max_timeout_seconds=300,
            asset=self.token,
            extra={"name": "USD Coin", "version": "2"},
        )


@pytest.fixture(scope="session")
def chain() -> Iterator[Chain]:
    try:
        chainlib.anvil_path()
    except chainlib.ChainError as exc:
        pytest.skip(str(exc))
    anvil = chainlib.start_anvil()
    try:
        yield Chain(anvil, chainlib.prepare_chain(anvil.rpc_url))
    finally:
        anvil.stop()


@dataclass(frozen=True)
class FacilitatorServer:
    url: str
    process: subprocess.Popen[bytes]


def _first_line(stream: IO[bytes], timeout: float) -> bytes:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return stream.readline()


@pytest.fixture(scope="session")
def facilitator_server(chain: Chain) -> Iterator[FacilitatorServer]:
    """`python -m gateway.demo.facilitator_server` on the session chain (anvil key #1)."""
    env = {**os.environ, "X402_TEST_FACILITATOR_KEY": chain.facilitator_key}
    argv = [sys.executable, "-m", "gateway.demo.facilitator_server", "--rpc-url", chain.rpc_url]
    argv += ["--private-key-env", "X402_TEST_FACILITATOR_KEY", "--port", "0"]
    argv += ["--network", chain.network]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            assert proc.stdout is not None
            line = _first_line(proc.stdout, timeout=60)
            if not line:
                stderr.seek(0)
                pytest.fail(f"facilitator server did not start: {stderr.read().decode()[-2000:]}")
            yield FacilitatorServer(json.loads(line)["listening"], proc)
        finally:
            stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="session")
def facilitator_url(facilitator_server: FacilitatorServer) -> str:
    return facilitator_server.url


@pytest.fixture
def make_payer(chain: Chain) -> Callable[..., LocalAccount]:
    """`make_payer(amount=10_000_000)`: a fresh account holding that much test USDC, no ETH."""

    def make(amount: int = DEFAULT_PAYER_BALANCE) -> LocalAccount:
        return chain.local.new_payer(amount)

    return make


@pytest.fixture
def payer(make_payer: Callable[..., LocalAccount]) -> LocalAccount:
    return make_payer()


@pytest.fixture
def x402_client_for(chain: Chain) -> Callable[[LocalAccount], x402Client]:
    """The SDK's paying client for an account, allowed to pay in the test USDC (v2 and v1)."""

    def make(account: LocalAccount) -> x402Client:
        return make_x402_client(account, [(chain.network, chain.token)])

    return make


@pytest.fixture
async def local_facilitator(chain: Chain) -> AsyncIterator[LocalFacilitator]:
    """The SDK facilitator in this process (anvil key #2), its calls in a thread pool."""
    async with LocalFacilitator(
        chain.rpc_url, chain.local_facilitator_key, [chain.network]
    ) as facilitator:
        yield facilitator


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    """A legacy origin on loopback (one per test module), recording every call it gets."""
    o = Origin().start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def pay_to() -> str:
    """A fresh recipient per test module, so its balance moves only by that module's tests."""
    return str(chainlib.new_account().address)
