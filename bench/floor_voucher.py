"""The Python floor of a channel voucher: `bench.floor_proxy` plus the least a paywall must do
for a plain batch-settlement voucher before it forwards, as plain code in one function.

What a voucher needs, and nothing else: the header decoded (base64, JSON), its version, its
accepted terms and channel config the same as the channel's first voucher's (compared as
dicts), its fields well-formed, the EIP-712 digest, the secp256k1 recovery, the signer the
channel's authorizer, single use (its signature seen once), the next cumulative amount within
the balance, then `X-Payer` to the origin and a receipt (base64 JSON) to the payer. No chain,
no store, no limits, metrics or logs: a lower bound for what the gateway's voucher road does
(gateway/voucher_road.py), which section E (bench/sessions.py) measures beside it in the same
run, each over its own free request.

    python -m bench.floor_voucher --listen 127.0.0.1:8082 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from coincurve import PublicKey
from multidict import CIMultiDict

from bench import floor_proxy
from gateway.payment.keccak import keccak
from gateway.payment.voucher_check import VOUCHER_TYPEHASH, domain

_CHANNEL_ID = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_DECIMAL = re.compile(r"[0-9]{1,39}")
REFUSED = 402


@dataclass
class VoucherFloor:
    """One channel's state, learnt from its first voucher (the floor trusts that one: its
    terms, price and chain)."""

    balance: int = 2**127
    price: int = 0
    separator: bytes = b""  # the EIP-712 domain separator
    accepted: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    cumulative: int | None = None
    seen: set[str] = field(default_factory=set)
    signers: dict[bytes, str] = field(default_factory=dict)

    def gate(self, headers: CIMultiDict[str]) -> dict[str, str] | web.Response:
        """The receipt for a good voucher (and `X-Payer` set); a bare 402 for anything else;
        no header: free."""
        value = headers.pop("PAYMENT-SIGNATURE", None)
        if value is None:
            return {}
        found = self._check(value)
        if found is None:
            return web.Response(status=REFUSED)
        payer, receipt = found
        headers["X-Payer"] = payer
        return {"PAYMENT-RESPONSE": receipt, "Cache-Control": "private, no-store"}

    def _check(self, value: str) -> tuple[str, str] | None:
        data = json.loads(base64.b64decode(value, validate=True))
        accepted, payload = data["accepted"], data["payload"]
        if self.accepted is None:
            self.accepted, self.config = accepted, payload["channelConfig"]
            self.price = int(accepted["amount"])
            self.separator = domain(int(accepted["network"].split(":")[1])).separator
        if (
            data["x402Version"] != 2  # the wire's version
            or accepted != self.accepted
            or payload["type"] != "voucher"
            or payload["channelConfig"] != self.config
        ):
            return None
        voucher = payload["voucher"]
        channel, amount_text = voucher["channelId"], voucher["maxClaimableAmount"]
        signature = voucher["signature"]
        if not (
            _CHANNEL_ID.fullmatch(channel)
            and _DECIMAL.fullmatch(amount_text)
            and _SIGNATURE.fullmatch(signature)
        ):
            return None
        amount = int(amount_text)
        payer = self._signer(channel, amount, signature)
        if payer != payload["channelConfig"]["payerAuthorizer"].lower():
            return None
        if signature in self.seen or amount > self.balance:
            return None
        if self.cumulative is not None and amount != self.cumulative + self.price:
            return None
        self.seen.add(signature)
        self.cumulative = amount
        receipt = {
            "success": True,
            "payer": payer,
            "transaction": "",
            "network": accepted["network"],
            "amount": str(self.price),
            "extra": {"channelId": channel, "chargedCumulativeAmount": amount_text},
        }
        return payer, base64.b64encode(json.dumps(receipt).encode()).decode()

    def _signer(self, channel: str, amount: int, signature: str) -> str:
        struct = keccak(VOUCHER_TYPEHASH + bytes.fromhex(channel[2:]) + amount.to_bytes(32, "big"))
        digest = keccak(b"\x19\x01" + self.separator + struct)
        raw = bytes.fromhex(signature[2:])
        v = raw[64] - 27 if raw[64] >= 27 else raw[64]  # Ethereum's v: 27 or 28
        public = PublicKey.from_signature_and_message(raw[:64] + bytes([v]), digest, hasher=None)
        key = public.format(compressed=False)
        signer = self.signers.get(key)
        if signer is None:
            signer = self.signers[key] = "0x" + keccak(key[1:])[-20:].hex()
        return signer


def main() -> None:
    floor_proxy.main(VoucherFloor().gate, __doc__.splitlines()[0], listen="127.0.0.1:8082")


if __name__ == "__main__":
    main()
