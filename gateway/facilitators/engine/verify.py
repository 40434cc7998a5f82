"""Which payments the engine settles itself, what their requirements ask, and the verdict
on one: locally first (terms, time window, signature), then, with a node, everything the
chain knows in ONE JSON-RPC batch (the payer's code, balance and `authorizationState`, the
token's code the first time, and an `eth_call` of the very transfer settle would send).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from x402.mechanisms.evm.constants import (
    ERR_ASSET_NOT_DEPLOYED_CONTRACT,
    ERR_EIP3009_NOT_SUPPORTED,
    ERR_INSUFFICIENT_BALANCE,
    ERR_MISSING_EIP712_DOMAIN,
    ERR_NETWORK_MISMATCH,
    ERR_NONCE_ALREADY_USED,
    SCHEME_EXACT,
)
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from gateway.payment import eip3009
from gateway.payment.eip3009 import Authorization, Domain, Sig

from .calls import authorization_state, balance_of, decode_uint, revert_text, transfer_call
from .rpc import Call, RpcClient, RpcError, hex_data
from .settle import refusal_reason

ERR_INVALID_REQUIREMENTS = "invalid_payment_requirements"
Payload = PaymentPayload | PaymentPayloadV1
Requirements = PaymentRequirements | PaymentRequirementsV1


@dataclass(frozen=True, slots=True)
class Route:
    """What the requirements ask of an exact EIP-3009 payment on the engine's chain."""

    network: str  # as the requirements name it (CAIP-2, or the v1 name)
    token: str  # lower-case
    pay_to: str
    amount: int
    domain: Domain


def _address(value: object) -> str | None:
    return value.lower() if isinstance(value, str) and eip3009.ADDRESS.fullmatch(value) else None


def _extra(requirements: Requirements) -> dict[str, Any]:
    extra: Any = requirements.extra or {}
    if isinstance(extra, str):  # v1 servers may send it JSON-encoded (the SDK accepts that)
        try:
            extra = json.loads(extra) if len(extra) < 4096 else {}
        except ValueError:
            extra = {}
    return extra if isinstance(extra, dict) else {}


def is_native(
    payload: Payload, requirements: Requirements, chain_id: int, v1_network: str | None
) -> bool:
    """Exact, EIP-3009, on this engine's chain: settled here. Anything else (Permit2,
    other schemes, other chains) goes to the delegate, if there is one."""
    if requirements.scheme != SCHEME_EXACT or payload.get_scheme() != SCHEME_EXACT:
        return False
    if isinstance(requirements, PaymentRequirementsV1):
        ours = v1_network is not None and requirements.network == v1_network
    else:
        ours = requirements.network == f"eip155:{chain_id}"
    if not ours or "permit2Authorization" in payload.payload:
        return False
    method = _extra(requirements).get("assetTransferMethod", "eip3009")
    return bool(method == "eip3009")


def route(payload: Payload, requirements: Requirements, chain_id: int) -> Route | str:
    """The route a native payment is checked against, or the SDK's reason it cannot be."""
    if payload.get_network() != requirements.network:
        return ERR_NETWORK_MISMATCH
    extra = _extra(requirements)
    name, version = extra.get("name"), extra.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        return ERR_MISSING_EIP712_DOMAIN
    token, pay_to = _address(requirements.asset), _address(requirements.pay_to)
    amount = requirements.get_amount()
    if token is None or pay_to is None or not eip3009.DECIMAL.fullmatch(amount):
        return ERR_INVALID_REQUIREMENTS
    domain = Domain(name, version, chain_id, token)
    return Route(str(requirements.network), token, pay_to, int(amount), domain)


@dataclass(frozen=True, slots=True)
class Funds:
    """What the token says of a payer and an authorization (shared with `verify: local`)."""

    balance: int | None  # None: balanceOf reverted or answered no uint
    used: bool | None  # None: the token has no authorizationState (not EIP-3009)


def funds_calls(token: str, auth: Authorization) -> list[Call]:
    """`balanceOf(payer)` and `authorizationState(payer, nonce)`, two `eth_call`s for a batch."""
    reads = [balance_of(token, auth.payer), authorization_state(token, auth.payer, auth.nonce)]
    return [Call("eth_call", ({"to": c.target, "data": hex_data(c.data)}, "latest")) for c in reads]


def decode_funds(balance: Any, used: Any) -> Funds:
    """The two answers of `funds_calls`; raises the RpcError of a call the node (not the
    contract) failed."""
    state = _uint_or_none(used)
    return Funds(balance=_uint_or_none(balance), used=None if state is None else bool(state))


async def read_funds(rpc: RpcClient, token: str, auth: Authorization) -> Funds:
    """Both reads in ONE JSON-RPC batch (one round trip). Raises RpcError/RpcUnavailable."""
    balance, used = await rpc.batch(funds_calls(token, auth))
    return decode_funds(balance, used)


def funds_reason(funds: Funds, value: int) -> tuple[str | None, str | None]:
    """The SDK's reason the token refuses this authorization (nonce first, as the SDK's
    diagnosis), or (None, None)."""
    if funds.used is None:
        return ERR_EIP3009_NOT_SUPPORTED, "authorizationState() failed"
    if funds.used:
        return ERR_NONCE_ALREADY_USED, None
    if funds.balance is not None and funds.balance < value:
        return ERR_INSUFFICIENT_BALANCE, f"balance {funds.balance} < {value}"
    return None, None


@dataclass(frozen=True, slots=True)
class ChainView:
    """What one batch read of the chain says about a payment."""

    payer_has_code: bool
    balance: int | None  # None: balanceOf failed
    used: bool | None  # None: the token has no authorizationState (not EIP-3009)
    simulation: RpcError | None  # the transfer's revert, or None if it would succeed
    token_has_code: bool | None  # None: not asked (known to be a contract)


async def read_chain(
    rpc: RpcClient, route: Route, auth: Authorization, settler: str, ask_token: bool
) -> ChainView:
    """One JSON-RPC batch. Raises RpcError/RpcUnavailable when the node is the problem."""
    inner, _ = eip3009.inner_signature(auth.signature)
    transfer = transfer_call(route.token, auth, inner)
    calls = [Call("eth_getCode", (auth.payer, "latest")), *funds_calls(route.token, auth)]
    sim_tx = {"from": settler, "to": transfer.target, "data": hex_data(transfer.data)}
    calls.append(Call("eth_call", (sim_tx, "latest")))
    if ask_token:
        calls.append(Call("eth_getCode", (route.token, "latest")))
    code, balance, used, sim, *token = await rpc.batch(calls)
    funds = decode_funds(balance, used)
    return ChainView(
        payer_has_code=_code(code),
        balance=funds.balance,
        used=funds.used,
        simulation=_revert(sim),
        token_has_code=_code(token[0]) if token else None,
    )


def _code(answer: Any) -> bool:
    if isinstance(answer, RpcError):
        raise answer
    return isinstance(answer, str) and answer not in ("0x", "0x0", "")


def _uint_or_none(answer: Any) -> int | None:
    if isinstance(answer, RpcError):
        if answer.is_revert:
            return None
        raise answer
    try:
        return decode_uint(bytes.fromhex(str(answer)[2:]))
    except ValueError:
        return None


def _revert(answer: Any) -> RpcError | None:
    if isinstance(answer, RpcError):
        if answer.is_revert:
            return answer
        raise answer
    return None


def chain_reason(view: ChainView, sig: Sig, value: int) -> tuple[str | None, str | None]:
    """(the SDK's reason to refuse, a message), or (None, None): the payment is good."""
    if view.token_has_code is False:
        return ERR_ASSET_NOT_DEPLOYED_CONTRACT, "the asset has no code"
    reason = eip3009.signature_reason(sig, view.payer_has_code)
    if reason is not None:
        return reason, None
    reason, message = funds_reason(Funds(view.balance, view.used), value)
    if reason is not None:
        return reason, message
    if view.simulation is not None:
        message = revert_text(view.simulation.message, view.simulation.revert_data)
        return refusal_reason(message), message
    return None, None
