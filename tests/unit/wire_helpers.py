"""Routes, payloads and headers for the x402 wire tests (challenge, decode, match).

Signed payloads come from the SDK's own client (`x402ClientSync` + the exact EVM scheme) with a
fresh random account: no chain is needed to sign.
"""

from __future__ import annotations

import base64
import json
import time
from types import MappingProxyType
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from multidict import CIMultiDict, CIMultiDictProxy
from x402 import x402ClientSync
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequiredV1

from gateway.config.settings import Address, Requirement, RouteSettings, Settings
from gateway.payment.challenge import payment_required

ASSET = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"  # USDC on Base Sepolia
OTHER_ASSET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
OTHER_PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PAYER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
NONCE = "0x" + "ab" * 32
# Not 65 bytes: a smart wallet's signature, which only the chain can check, so the matching
# tests built on it never depend on the local signature check (tests/unit/payment/test_eip3009.py).
SIGNATURE = "0x" + "11" * 66
URL = "http://gw.test/paid/report?x=1"
DOMAIN = MappingProxyType({"name": "USDC", "version": "2"})


def requirement(**changes: Any) -> Requirement:
    fields: dict[str, Any] = {
        "scheme": "exact",
        "network": "eip155:84532",
        "asset": ASSET,
        "amount": 1000,
        "pay_to": PAY_TO,
        "max_timeout_seconds": 300,
        "extra": DOMAIN,
    }
    fields.update(changes)
    return Requirement(**fields)


# A batch-settlement channel (issue 14): the route's requirement, a payer's channel config
# for it, and vouchers signed by the SDK's own client code.
CHANNEL_NETWORK = "eip155:84532"  # `requirement()`'s network
RECEIVER_AUTHORIZER = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"
BATCH = requirement(
    scheme="batch-settlement",
    extra=MappingProxyType(
        {
            "name": "USDC",
            "version": "2",
            "withdrawDelay": 900,
            "minDeposit": "1000000",
            "receiverAuthorizer": RECEIVER_AUTHORIZER,
        }
    ),
)


def channel_config(payer: LocalAccount, **changes: Any) -> dict[str, Any]:
    """`payer`'s channel config on `BATCH`'s terms (its own key authorizes its vouchers)."""
    fields: dict[str, Any] = {
        "payer": payer.address,
        "payerAuthorizer": payer.address,
        "receiver": PAY_TO,
        "receiverAuthorizer": RECEIVER_AUTHORIZER,
        "token": ASSET,
        "withdrawDelay": 900,
        "salt": "0x" + "00" * 32,
    }
    fields.update(changes)
    return fields


def signed_voucher(signer: LocalAccount, cfg: dict[str, Any], amount: int) -> dict[str, Any]:
    """A voucher for `amount` on `cfg`'s channel, signed by `signer` (the SDK's client)."""
    channel_id = compute_channel_id(ChannelConfig.from_dict(cfg), CHANNEL_NETWORK)
    return sign_voucher(EthAccountSigner(signer), channel_id, amount, CHANNEL_NETWORK).to_dict()


def route(*accepts: Requirement, **changes: Any) -> RouteSettings:
    fields: dict[str, Any] = {
        "index": 3,
        "path": "/paid/*",
        "methods": None,
        "accepts": accepts or (requirement(),),
        "description": "A paid report",
        "mime_type": "application/json",
    }
    fields.update(changes)
    return RouteSettings(**fields)


def settings(*routes: RouteSettings, **changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "source": "test.yaml",
        "listen": Address("127.0.0.1", 0),
        "upstream": "http://127.0.0.1:9",
        "routes": routes,
    }
    fields.update(changes)
    return Settings(**fields)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def b64json(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def accepted(req: Requirement | None = None, **changes: Any) -> dict[str, Any]:
    req = req or requirement()
    out: dict[str, Any] = {
        "scheme": req.scheme,
        "network": req.network,
        "asset": req.asset,
        "amount": str(req.amount),
        "payTo": req.pay_to,
        "maxTimeoutSeconds": req.max_timeout_seconds,
        "extra": dict(req.extra),
    }
    out.update(changes)
    return out


def authorization(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "from": PAYER,
        "to": PAY_TO,
        "value": "1000",
        "validAfter": "0",
        "validBefore": str(int(time.time()) + 300),
        "nonce": NONCE,
    }
    out.update(changes)
    return out


def eip3009(**changes: Any) -> dict[str, Any]:
    return {"authorization": authorization(**changes), "signature": SIGNATURE}


def v2_dict(payload: dict[str, Any] | None = None, **accepted_changes: Any) -> dict[str, Any]:
    return {
        "x402Version": 2,
        "accepted": accepted(**accepted_changes),
        "payload": eip3009() if payload is None else payload,
        "resource": {"url": URL},
    }


def v1_dict(payload: dict[str, Any] | None = None, network: str = "base-sepolia") -> dict[str, Any]:
    return {
        "x402Version": 1,
        "scheme": "exact",
        "network": network,
        "payload": eip3009() if payload is None else payload,
    }


def client(account: LocalAccount) -> x402ClientSync:
    paying = x402ClientSync()
    register_exact_evm_client(paying, EthAccountSigner(account))
    paying.set_spend_controls(False)  # the test tokens are not the SDK's known assets
    return paying


def new_account() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


def sdk_v2_payment(priced: RouteSettings, account: LocalAccount) -> tuple[PaymentPayload, str]:
    """What the SDK's client sends for our v2 challenge: (payload, PAYMENT-SIGNATURE value)."""
    head, _ = payment_required(priced, URL, "Payment required")
    challenge = decode_payment_required_header(head["PAYMENT-REQUIRED"])
    assert isinstance(challenge, PaymentRequired)
    payload = client(account).create_payment_payload(challenge)
    assert isinstance(payload, PaymentPayload)
    return payload, encode_payment_signature_header(payload)


def sdk_v1_payment(priced: RouteSettings, account: LocalAccount) -> tuple[PaymentPayloadV1, str]:
    """What the SDK's client sends for our v1 body: (payload, X-PAYMENT value)."""
    _, body = payment_required(priced, URL, "Payment required")
    payload = client(account).create_payment_payload(PaymentRequiredV1.model_validate_json(body))
    assert isinstance(payload, PaymentPayloadV1)
    return payload, encode_payment_signature_header(payload)
