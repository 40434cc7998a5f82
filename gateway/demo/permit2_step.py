"""The demo's Permit2 step: a token without EIP-3009 (TestUSDT) pays a route through Permit2.

The payer has never approved Permit2, so its first payment is answered 412
`permit2_allowance_required` (nothing charged, the claim released); it sends the one-time
`approve(Permit2)` itself (it holds gas), then the very same signed payment buys the
response, and the chain shows exactly the price moved in USDT.
"""

from __future__ import annotations

import asyncio

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.schemas import PaymentPayload

from .chain import LocalChain, balance_of, rpc_call
from .payer import make_x402_client, pay_challenge
from .stack import PAYER_KEY, Stack
from .terminal import Printer, usd
from .x402_contracts import approve_permit2

REPORT_PATH = "/api/report/lisbon"
DECIMALS = 6  # TestUSDT's


def _balances(chain: LocalChain, stack: Stack) -> tuple[int, int]:
    return (
        balance_of(chain.rpc_url, chain.usdt, stack.payer),
        balance_of(chain.rpc_url, chain.usdt, stack.payee),
    )


def _refused_first(out: Printer, http: httpx.Client, headers: dict[str, str]) -> bool:
    out.request("GET", f"{http.base_url}{REPORT_PATH}", "with PAYMENT-SIGNATURE (Permit2)")
    first = http.get(REPORT_PATH, headers=headers)
    out.status(first.status_code, first.reason_phrase)
    error = ""
    if header := first.headers.get("PAYMENT-REQUIRED"):
        error = decode_payment_required_header(header).error or ""
    return out.check(
        first.status_code == 412 and error == "permit2_allowance_required",
        "412 permit2_allowance_required: the payer has not approved Permit2 yet",
        f"expected 412 permit2_allowance_required, got {first.status_code} {error!r}",
    )


def permit2_step(out: Printer, http: httpx.Client, stack: Stack, chain: LocalChain) -> None:
    """Step 5, printed and checked."""
    out.heading(5, "A token without EIP-3009 (USDT) pays through Permit2")
    challenge = http.get(REPORT_PATH)
    header = challenge.headers.get("PAYMENT-REQUIRED")
    offer = decode_payment_required_header(header).accepts[0] if header else None
    if not out.check(
        challenge.status_code == 402
        and offer is not None
        and offer.asset.lower() == chain.usdt.lower()
        and (offer.extra or {}).get("assetTransferMethod") == "permit2",
        "402: the challenge asks for USDT with assetTransferMethod permit2",
        f"expected 402 asking for USDT through Permit2, got {challenge.status_code} {offer}",
    ):
        return
    account: LocalAccount = Account.from_key(PAYER_KEY)
    client = make_x402_client(account, [(chain.network, chain.usdt)])
    headers, payload = asyncio.run(pay_challenge(client, challenge.headers, challenge.content))
    amount = int(payload.accepted.amount) if isinstance(payload, PaymentPayload) else 0
    out.note("the payer signs a Permit2 transfer to the x402 Permit2 proxy")
    if not _refused_first(out, http, headers):
        return
    approval = approve_permit2(chain.rpc_url, chain.usdt, PAYER_KEY)
    out.note(f"the payer approves Permit2 once: {'0x' + bytes(approval['transactionHash']).hex()}")
    before = _balances(chain, stack)
    out.request("GET", f"{http.base_url}{REPORT_PATH}", "the same PAYMENT-SIGNATURE again")
    paid = http.get(REPORT_PATH, headers=headers)
    out.status(paid.status_code, paid.reason_phrase)
    settled = paid.headers.get("PAYMENT-RESPONSE")
    if not out.check(
        paid.status_code == 200 and bool(settled),
        "200 with a PAYMENT-RESPONSE header",
        f"expected 200, got {paid.status_code}",
    ):
        return
    result = decode_payment_response_header(str(settled))
    after = _balances(chain, stack)
    out.field("transaction", result.transaction)
    out.field("payer USDT", f"{usd(before[0], DECIMALS)} -> {usd(after[0], DECIMALS)}")
    out.field("payee USDT", f"{usd(before[1], DECIMALS)} -> {usd(after[1], DECIMALS)}")
    receipt = rpc_call(chain.rpc_url, "eth_getTransactionReceipt", [result.transaction])
    out.check(
        bool(receipt) and int(receipt.get("status", "0x0"), 16) == 1,
        "the Permit2 transfer is mined (receipt status 1)",
        f"no successful receipt for {result.transaction!r}",
    )
    out.check(
        after == (before[0] - amount, before[1] + amount) and amount > 0,
        f"exactly {usd(amount, DECIMALS)} USDT moved from payer to payee",
        f"USDT moved unexpectedly: before {before}, after {after}, price {amount}",
    )
