"""`python -m bench.paid_steps`: the CPU of the paid path's in-process steps, one by one
(issue 13 item 5): what each microsecond of a paid request that is not HTTP goes to.

No sockets: an SDK-signed v2 `exact` payment (tests/unit/wire_helpers) is decoded, matched,
verified by `verify: local` (no RPC) and settled through the SDK's `x402ResourceServer` on a
facilitator that answers at once (its answers parsed as the remote client parses them). Each
step is timed with `time.process_time()` over `--calls` calls, `--rounds` times, rounds
alternating with the variant it replaces (`before`: the signature checked twice under
`verify: local`, the payer's checksum computed per call); the median per call is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from gateway.facilitators.local_verify import LocalVerify
from gateway.facilitators.remote import RemoteFacilitator
from gateway.payment import decode_payment, eip3009, match_requirement
from gateway.payment.engine import Payments
from gateway.payment.receipts import receipt_headers
from gateway.store.memory import MemoryStore
from tests.unit.wire_helpers import URL, headers, new_account, route, sdk_v2_payment

PRICED = route()
SUPPORTED = SupportedResponse(
    kinds=[SupportedKind(x402_version=2, scheme="exact", network="eip155:84532")],
    extensions=[],
    signers={},
)


class Instant:
    """A facilitator that answers at once, parsing its JSON as RemoteFacilitator does."""

    def __init__(self, payer: str) -> None:
        self.verified = b'{"isValid":true,"payer":"%s"}' % payer.encode()
        self.settled = b'{"success":true,"transaction":"0x%s","network":"eip155:84532"}' % (
            b"ab" * 32
        )

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        return VerifyResponse.model_validate_json(self.verified)

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        return SettleResponse.model_validate_json(self.settled)

    def get_supported(self) -> SupportedResponse:
        return SUPPORTED

    async def refresh_supported(self) -> list[str]:
        return []

    async def ping(self) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def per_call(step: Callable[[], Awaitable[object]], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        await step()
    return (time.process_time() - started) / calls * 1e6


def steps() -> dict[str, Callable[[], Awaitable[object]]]:
    """Each step on a fresh payment per round (a payer pays several times: checksums kept)."""
    _, value = sdk_v2_payment(PRICED, new_account())
    sent = headers(("PAYMENT-SIGNATURE", value))
    decoded = decode_payment(sent, 16384)
    assert decoded is not None
    shared = eip3009.SignatureChecks()
    matched = match_requirement(PRICED, decoded, URL, None, shared)
    fast = Instant(matched.payer)
    server = Payments(fast, MemoryStore()).server
    server.initialize()  # reads the facilitator's /supported (the SDK's own start-up)
    settled = SettleResponse.model_validate_json(fast.settled)

    async def of(fn: Callable[[], object]) -> object:
        return fn()

    def match_and_verify(share: bool) -> Callable[[], Awaitable[object]]:
        async def run() -> object:  # a fresh verifier and cache each call: no verdict kept
            checks = eip3009.SignatureChecks() if share else None
            verifier = LocalVerify(fast, signatures=checks)
            m = match_requirement(PRICED, decoded, URL, None, checks)
            return await verifier.verify(m.payload, m.requirements)

        return run

    return {
        "decode_payment": lambda: of(lambda: decode_payment(sent, 16384)),
        "match_requirement (ECDSA recover)": lambda: of(
            lambda: match_requirement(PRICED, decoded, URL)
        ),
        "verify local: match + LocalVerify, before (2 recoveries)": match_and_verify(False),
        "verify local: match + LocalVerify, after (1, shared)": match_and_verify(True),
        "checksummed(payer), before (keccak per call)": lambda: of(
            lambda: eip3009.checksummed.__wrapped__(matched.payer.lower())
        ),
        "checksummed(payer), after (memoized)": lambda: of(
            lambda: eip3009.checksummed(matched.payer.lower())
        ),
        "RemoteFacilitator request body": lambda: of(
            lambda: RemoteFacilitator._body(matched.payload, matched.requirements)
        ),
        "SDK verify_payment (instant facilitator)": lambda: server.verify_payment(
            matched.payload, matched.requirements
        ),
        "SDK settle_payment (instant facilitator)": lambda: server.settle_payment(
            matched.payload, matched.requirements
        ),
        "PAYMENT-RESPONSE header": lambda: of(lambda: receipt_headers(settled, 2)),
    }


async def run(rounds: int, calls: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, step in steps().items():
            await step()  # warm
            found.setdefault(name, []).append(await per_call(step, calls))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paid_steps")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    found = asyncio.run(run(args.rounds, args.calls))
    print("| step | µs CPU/call, median | min | max |")
    print("| --- | --- | --- | --- |")
    for name, values in found.items():
        print(
            f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
