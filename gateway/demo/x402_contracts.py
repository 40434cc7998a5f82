"""The x402 contracts on a local chain, at the addresses the official SDK has fixed for them.

The SDK calls Permit2, the `exact`/`upto` Permit2 proxies and the batch-settlement contract
with its two deposit collectors at constant addresses (the same on every chain). On anvil we
put the compiled runtime code there with `anvil_setCode`. Permit2 keeps its EIP-712 domain
separator (built with `address(this)` and the chain id) in immutables, so its runtime code is
patched for the target address and chain before it is placed; the other contracts have no
immutables and no constructor state. After placing, every contract's view functions are asked
what they answer at their address, so a wrong placement fails here, not in a payment.

Also here: `TestUSDT`, a plain 6-decimal ERC-20 without EIP-3009 or EIP-2612 (the token that
can only pay through Permit2), and the payer's one-time Permit2 approval.

Blocking (sync web3): call it off the event loop from async code. Never on the request path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from x402.mechanisms.evm.batch_settlement import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
    ChannelConfig,
    compute_channel_id,
)
from x402.mechanisms.evm.constants import (
    PERMIT2_ADDRESS,
    X402_EXACT_PERMIT2_PROXY_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
)

from gateway.demo import chain as chainlib

MAX_UINT256 = 2**256 - 1

# artifact name (gateway/demo/contracts/<name>.json) -> the address the SDK calls it at
PLACEMENTS: dict[str, str] = {
    "Permit2": to_checksum_address(PERMIT2_ADDRESS),
    "ExactPermit2Proxy": to_checksum_address(X402_EXACT_PERMIT2_PROXY_ADDRESS),
    "UptoPermit2Proxy": to_checksum_address(X402_UPTO_PERMIT2_PROXY_ADDRESS),
    "BatchSettlement": to_checksum_address(BATCH_SETTLEMENT_ADDRESS),
    "ERC3009DepositCollector": to_checksum_address(ERC3009_DEPOSIT_COLLECTOR_ADDRESS),
    "Permit2DepositCollector": to_checksum_address(PERMIT2_DEPOSIT_COLLECTOR_ADDRESS),
}

USDT_NAME = "Tether USD"
USDT_SYMBOL = "USDT"
USDT_DECIMALS = 6

_PERMIT2_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,uint256 chainId,address verifyingContract)"
)


class ContractsError(chainlib.ChainError):
    """A contract is missing at its address, or answers what it should not."""


@dataclass(frozen=True)
class X402Contracts:
    """Where the x402 contracts are on this chain (the SDK's constants, checksummed)."""

    permit2: str = PLACEMENTS["Permit2"]
    exact_permit2_proxy: str = PLACEMENTS["ExactPermit2Proxy"]
    upto_permit2_proxy: str = PLACEMENTS["UptoPermit2Proxy"]
    batch_settlement: str = PLACEMENTS["BatchSettlement"]
    erc3009_deposit_collector: str = PLACEMENTS["ERC3009DepositCollector"]
    permit2_deposit_collector: str = PLACEMENTS["Permit2DepositCollector"]


def permit2_domain_separator(chain_id: int, address: str = PERMIT2_ADDRESS) -> bytes:
    """Permit2's EIP-712 domain separator (name "Permit2", no version) for a chain/address."""
    encoded = abi_encode(
        ["bytes32", "bytes32", "uint256", "address"],
        [_PERMIT2_DOMAIN_TYPEHASH, keccak(text="Permit2"), chain_id, to_checksum_address(address)],
    )
    return bytes(keccak(encoded))


def runtime_code(name: str, chain_id: int, address: str) -> str:
    """The artifact's runtime code with its immutables set as its constructor would have set
    them had it been deployed at `address` on `chain_id`."""
    artifact = chainlib.load_artifact(name)
    code = bytearray.fromhex(artifact["deployedBytecode"].removeprefix("0x"))
    values = _immutable_values(name, chain_id, address)
    for node_id, refs in artifact["immutableReferences"].items():
        value = values[artifact["immutableNames"][node_id]]
        for ref in refs:
            code[ref["start"] : ref["start"] + ref["length"]] = value
    return "0x" + code.hex()


def _immutable_values(name: str, chain_id: int, address: str) -> dict[str, bytes]:
    if name == "Permit2":
        return {
            "_CACHED_CHAIN_ID": chain_id.to_bytes(32, "big"),
            "_CACHED_DOMAIN_SEPARATOR": permit2_domain_separator(chain_id, address),
        }
    return {}  # our stand-ins keep their addresses in constants: nothing to fill in


def install_x402_contracts(rpc_url: str) -> X402Contracts:
    """Place Permit2, both proxies, batch settlement and its collectors (and Multicall3,
    which the SDK's facilitator reads channel state through) where the SDK expects them,
    then check that each answers as it should. Idempotent: code already in place is kept."""
    chain_id = int(chainlib.rpc_call(rpc_url, "eth_chainId"), 16)
    chainlib.install_multicall3(rpc_url)
    for name, address in PLACEMENTS.items():
        code = runtime_code(name, chain_id, address)
        if chainlib.rpc_call(rpc_url, "eth_getCode", [address, "latest"]) != code:
            chainlib.rpc_call(rpc_url, "anvil_setCode", [address, code])
    contracts = X402Contracts()
    check_x402_contracts(rpc_url, contracts)
    return contracts


def _contract(w3: Any, name: str, address: str) -> Any:
    return w3.eth.contract(address=address, abi=chainlib.load_artifact(name)["abi"])


def check_x402_contracts(rpc_url: str, contracts: X402Contracts) -> None:
    """Ask each placed contract what it answers; raise ContractsError on the first surprise."""
    w3 = chainlib.web3_for(rpc_url)
    chain_id = int(w3.eth.chain_id)
    permit2 = _contract(w3, "Permit2", contracts.permit2)
    if bytes(permit2.functions.DOMAIN_SEPARATOR().call()) != permit2_domain_separator(chain_id):
        raise ContractsError("Permit2 DOMAIN_SEPARATOR() is not the one for its address")
    for name, address in (
        ("ExactPermit2Proxy", contracts.exact_permit2_proxy),
        ("UptoPermit2Proxy", contracts.upto_permit2_proxy),
        ("Permit2DepositCollector", contracts.permit2_deposit_collector),
    ):
        if _contract(w3, name, address).functions.PERMIT2().call() != contracts.permit2:
            raise ContractsError(f"{name} at {address} does not point at Permit2")
    for name, address in (
        ("ERC3009DepositCollector", contracts.erc3009_deposit_collector),
        ("Permit2DepositCollector", contracts.permit2_deposit_collector),
    ):
        settlement = _contract(w3, name, address).functions.x402BatchSettlement().call()
        if settlement != contracts.batch_settlement:
            raise ContractsError(f"{name} at {address} does not point at the settlement contract")
    _check_channel_ids(w3, contracts.batch_settlement, chain_id)


def _check_channel_ids(w3: Any, address: str, chain_id: int) -> None:
    """The contract's channel id (its EIP-712 domain at this address) is the SDK's."""
    one = "0x" + "11" * 20
    config = ChannelConfig(
        payer=one,
        payer_authorizer="0x" + "00" * 20,
        receiver=one,
        receiver_authorizer=one,
        token=one,
        withdraw_delay=900,
        salt="0x" + "00" * 32,
    )
    as_tuple = (one, "0x" + "00" * 20, one, one, one, 900, b"\x00" * 32)
    tuple_ = tuple(to_checksum_address(v) if isinstance(v, str) else v for v in as_tuple)
    on_chain = _contract(w3, "BatchSettlement", address).functions.getChannelId(tuple_).call()
    if "0x" + bytes(on_chain).hex() != compute_channel_id(config, chain_id):
        raise ContractsError("BatchSettlement channel ids differ from the SDK's")


def deploy_tether(rpc_url: str, owner_key: str) -> str:
    """Deploy TestUSDT ("Tether USD", USDT, 6 decimals, no EIP-3009, no permit); the owner
    is its only minter. Its address."""
    w3 = chainlib.web3_for(rpc_url)
    artifact = chainlib.load_artifact("TestUSDT")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx = factory.constructor().build_transaction({"gas": 2_000_000})
    receipt = chainlib.send_transaction(w3, owner_key, tx)
    address: str = Web3.to_checksum_address(receipt["contractAddress"])
    return address


def erc20_allowance(rpc_url: str, token: str, owner: str, spender: str = PERMIT2_ADDRESS) -> int:
    w3 = chainlib.web3_for(rpc_url)
    erc20 = _contract(w3, "TestUSDT", to_checksum_address(token))
    allowance: int = erc20.functions.allowance(
        to_checksum_address(owner), to_checksum_address(spender)
    ).call()
    return allowance


def approve_permit2(rpc_url: str, token: str, payer_key: str, amount: int = MAX_UINT256) -> Any:
    """The payer's one-time `token.approve(Permit2, amount)` (the payer pays its gas).
    Returns the receipt."""
    w3 = chainlib.web3_for(rpc_url)
    erc20 = _contract(w3, "TestUSDT", to_checksum_address(token))
    call = erc20.functions.approve(to_checksum_address(PERMIT2_ADDRESS), amount)
    return chainlib.send_transaction(w3, payer_key, call.build_transaction({"gas": 100_000}))


def new_permit2_payer(  # noqa: PLR0913  what to fund it with, the options keyword-only
    rpc_url: str,
    token: str,
    owner_key: str,
    amount: int,
    *,
    eth_wei: int = 0,
    approve: bool = False,
) -> LocalAccount:
    """A fresh account holding `amount` of `token` (minted by `owner_key`), `eth_wei` of gas
    money from the owner, and, with `approve`, Permit2 already approved for it (the owner
    then sends it the gas for that approval first)."""
    payer = chainlib.new_funded_payer(rpc_url, token, owner_key, amount)
    gas_money = eth_wei + (10**16 if approve else 0)
    if gas_money:
        chainlib.fund_eth(rpc_url, owner_key, payer.address, gas_money)
    if approve:
        approve_permit2(rpc_url, token, payer.key.hex())
    return payer


def gas_used(rpc_url: str, tx_hash: str) -> int:
    """Gas a mined transaction used (from its receipt)."""
    receipt = chainlib.web3_for(rpc_url).eth.get_transaction_receipt(tx_hash)
    used: int = receipt["gasUsed"]
    return used
