"""Requirements and signed payments for the engine's unit tests (no chain needed to sign).

Payments come from the SDK's own client (`x402ClientSync` + the exact EVM scheme with an
`EthAccountSigner`), or from eth-account's `sign_typed_data` directly.
"""

from __future__ import annotations

import os
import time
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402ClientSync
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequiredV1, PaymentRequirementsV1

from gateway.payment.eip3009 import Domain

CHAIN_ID = 84532
NETWORK = "eip155:84532"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
DOMAIN = Domain("USD Coin", "2", CHAIN_ID, TOKEN.lower())
TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def account() -> LocalAccount:
    acct: LocalAccount = Account.create()
    return acct


def requirements(amount: int = 1000, pay_to: str = PAY_TO, **extra: Any) -> PaymentRequirements:
    return PaymentRequirements(
        scheme="exact",
        network=NETWORK,
        asset=TOKEN,
        amount=str(amount),
        pay_to=pay_to,
        max_timeout_seconds=300,
        extra={"name": "USD Coin", "version": "2", **extra},
    )


def requirements_v1(amount: int = 1000, pay_to: str = PAY_TO) -> PaymentRequirementsV1:
    return PaymentRequirementsV1(
        scheme="exact",
        network="base-sepolia",
        max_amount_required=str(amount),
        resource="http://local/paid",
        pay_to=pay_to,
        max_timeout_seconds=300,
        asset=TOKEN,
        extra={"name": "USD Coin", "version": "2"},
    )


def _client(signer: LocalAccount) -> x402ClientSync:
    client = x402ClientSync()
    register_exact_evm_client(client, EthAccountSigner(signer))
    client.set_spend_controls(
        {
            "allowed_assets": [
                {"network": NETWORK, "asset": TOKEN},
                {"network": "base-sepolia", "asset": TOKEN},
            ]
        }
    )
    return client


def sdk_signed(signer: LocalAccount, req: PaymentRequirements | None = None) -> PaymentPayload:
    """A v2 payment made by the SDK's own client."""
    req = req or requirements()
    payload = _client(signer).create_payment_payload(
        PaymentRequired(resource=ResourceInfo(url="http://local/"), accepts=[req])
    )
    assert isinstance(payload, PaymentPayload)
    return payload


def sdk_signed_v1(
    signer: LocalAccount, req: PaymentRequirementsV1 | None = None
) -> PaymentPayloadV1:
    payload = _client(signer).create_payment_payload(
        PaymentRequiredV1(x402_version=1, accepts=[req or requirements_v1()])
    )
    assert isinstance(payload, PaymentPayloadV1)
    return payload


def eth_account_signed(
    signer: LocalAccount,
    *,
    to: str = PAY_TO,
    value: int = 1000,
    valid_after: int = 0,
    valid_before: int | None = None,
    nonce: bytes | None = None,
    domain: Domain = DOMAIN,
    claimed_from: str | None = None,
) -> dict[str, Any]:
    """`{authorization, signature}` signed with eth-account's `sign_typed_data`."""
    message = {
        "from": claimed_from or signer.address,
        "to": to,
        "value": value,
        "validAfter": valid_after,
        "validBefore": valid_before if valid_before is not None else int(time.time()) + 300,
        "nonce": nonce or os.urandom(32),
    }
    signed = signer.sign_typed_data(
        {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.token,
        },
        TYPES,
        message,
    )
    return {
        "authorization": {
            **{k: str(v) for k, v in message.items() if k != "nonce"},
            "nonce": "0x" + message["nonce"].hex(),
        },
        "signature": "0x" + bytes(signed.signature).hex(),
    }
