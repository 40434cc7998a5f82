"""Chain reads for reconciling a crashed settlement: one `eth_call` of EIP-3009
`authorizationState(authorizer, nonce)` and, when used, `eth_getLogs` for the token's
`AuthorizationUsed(authorizer, nonce)` to name the transaction. web3's async client (no
thread pool needed); one per network with an RPC URL (`networks:` or a local facilitator's).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from eth_utils.crypto import keccak
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import Web3Exception
from web3.types import FilterParams, TxParams

from gateway.config.settings import LocalFacilitatorSettings, Settings
from gateway.errors import ChainUnavailable
from gateway.payment.reconcile import ChainState

AUTHORIZATION_STATE = keccak(text="authorizationState(address,bytes32)")[:4]
AUTHORIZATION_USED = keccak(text="AuthorizationUsed(address,bytes32)")
LOG_LOOKBACK = 5000  # blocks searched for the transaction (hours on an L2; many RPCs cap ranges)


def _word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


class Web3Chain:
    def __init__(self, rpc_urls: Mapping[str, str], timeout: float = 5.0) -> None:
        self._w3 = {
            network: AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": timeout}))
            for network, url in rpc_urls.items()
        }

    def covers(self, network: str) -> bool:
        return network in self._w3

    async def authorization(
        self, network: str, token: str, authorizer: str, nonce: str
    ) -> ChainState:
        try:
            return await self._authorization(self._w3[network], token, authorizer, nonce)
        except (aiohttp.ClientError, OSError, Web3Exception, ValueError) as exc:
            # ValueError: what web3 raises for an answer it cannot read.
            raise ChainUnavailable(f"RPC for {network}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    async def _authorization(
        w3: AsyncWeb3[AsyncHTTPProvider], token: str, authorizer: str, nonce: str
    ) -> ChainState:
        nonce32 = bytes.fromhex(nonce[2:])
        call: TxParams = {
            "to": AsyncWeb3.to_checksum_address(token),
            "data": AUTHORIZATION_STATE + _word(authorizer) + nonce32,
        }
        used = int.from_bytes(await w3.eth.call(call), "big") != 0
        if not used:
            return ChainState(used=False)
        latest = await w3.eth.block_number
        query: FilterParams = {
            "address": AsyncWeb3.to_checksum_address(token),
            "fromBlock": max(0, latest - LOG_LOOKBACK),
            "toBlock": latest,
            "topics": [AUTHORIZATION_USED, _word(authorizer), nonce32],  # type: ignore[list-item]
        }
        logs = await w3.eth.get_logs(query)
        transaction = logs[-1]["transactionHash"].to_0x_hex() if logs else None
        return ChainState(used=True, transaction=transaction)

    async def close(self) -> None:
        for w3 in self._w3.values():
            await w3.provider.disconnect()


def rpc_urls(settings: Settings) -> dict[str, str]:
    """The RPC URL per network: `networks:`, then a local facilitator's for its networks."""
    urls = {network: net.rpc_url for network, net in settings.networks.items()}
    served = {req.network for r in settings.routes for req in r.accepts} or {settings.network}
    for facilitator in settings.facilitators:
        if isinstance(facilitator, LocalFacilitatorSettings):
            for network in sorted(served):
                urls.setdefault(network, facilitator.rpc_url)
    return urls


def open_chain(settings: Settings) -> Web3Chain | None:
    """The chain reader for reconciliation, or None when no network has an RPC URL."""
    urls = rpc_urls(settings)
    return Web3Chain(urls) if urls else None


def settle_timeout(settings: Settings) -> float:
    """The longest a facilitator may take to answer a settle (the settle window's base)."""
    return max((f.timeout for f in settings.facilitators), default=30.0)
