"""`x402-gateway demo [--once]`: the whole product on loopback, offline, in one command.

anvil with a test USDC, the demo origin (which knows nothing of payments), and the gateway
in front of it (`x402-gateway serve --config config/demo.yaml`, its facilitator in-process);
then, printed for a person: a free request, an unpaid one (the 402 challenge decoded), a
paid one made with the SDK's own client (the transaction, balances before and after), and
a replay of that payment (refused, nothing charged), a payment in a token without EIP-3009
(USDT) through Permit2, first-time approval included, and a payment channel: one deposit,
100 calls on off-chain vouchers (no transaction each), then the gateway's claim. Without
`--once` it then keeps the stack running for curl and a browser until Ctrl-C. Every step is
checked: the exit code is 0 only when each went as shown.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.schemas import PaymentPayload, PaymentPayloadV1, PaymentRequirements

from .chain import ChainError, LocalChain, balance_of, rpc_call, tx_count
from .channel_step import channel_step
from .payer import make_x402_client, pay_challenge
from .permit2_step import permit2_step
from .stack import PAYER_KEY, DemoError, Stack, choose_ports, config_path
from .terminal import Printer, format_log_line, usd

PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
PAID_PATH = "/api/forecast/lisbon"
TRY_PATH = "/api/forecast/paris"
REFUSED = (402, 409)
DECIMALS = 6  # the test USDC's, as demo.yaml's `asset` says


@dataclass(frozen=True)
class Balances:
    """Who holds what, at one moment, as the chain says."""

    payer: int
    payee: int
    settler_txs: int


def moved_exactly(before: Balances, after: Balances, amount: int) -> bool:
    """A paid request moved `amount` from payer to payee in one settlement."""
    return (
        before.payer - after.payer == amount
        and after.payee - before.payee == amount
        and after.settler_txs - before.settler_txs == 1
    )


def is_tx_hash(value: str | None) -> bool:
    if not value or len(value) != 66 or not value.startswith("0x"):
        return False
    try:
        int(value, 16)
    except ValueError:
        return False
    return True


def same_address(a: str | None, b: str | None) -> bool:
    return bool(a and b) and str(a).lower() == str(b).lower()


def body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


class Walkthrough:
    """The steps, each printed and checked, against a started `Stack`."""

    def __init__(self, stack: Stack, chain: LocalChain, out: Printer) -> None:
        self.stack = stack
        self.chain = chain
        self.out = out
        self.http = httpx.Client(base_url=stack.gateway_url, timeout=30.0)
        # The SDK pays only its known stablecoins unless told: ours is a local test token.
        self.payer = make_x402_client(_payer_account(), [(chain.network, chain.token)])

    def close(self) -> None:
        self.http.close()

    def sign(
        self, challenge: httpx.Response
    ) -> tuple[dict[str, str], PaymentPayload | PaymentPayloadV1]:
        """The SDK client's payment for a 402 answer (signing is local: no I/O to wait on)."""
        return asyncio.run(pay_challenge(self.payer, challenge.headers, challenge.content))

    def balances(self) -> Balances:
        rpc, token = self.chain.rpc_url, self.chain.token
        return Balances(
            payer=balance_of(rpc, token, self.stack.payer),
            payee=balance_of(rpc, token, self.stack.payee),
            settler_txs=tx_count(rpc, self.chain.facilitator_address),
        )

    def show_balances(self, when: str, b: Balances) -> None:
        self.out.field(f"payer {when}", usd(b.payer, DECIMALS))
        self.out.field(f"payee {when}", usd(b.payee, DECIMALS))

    def free(self) -> None:
        self.out.heading(1, "A free route passes straight through")
        self.out.request("GET", f"{self.stack.gateway_url}/api/status", "price: free")
        response = self.http.get("/api/status")
        self.out.status(response.status_code, response.reason_phrase)
        self.out.json(body_of(response))
        self.out.check(
            response.status_code == 200,
            "the origin answered, no payment asked",
            f"expected 200, got {response.status_code}",
        )

    def unpaid(self) -> httpx.Response | None:
        self.out.heading(2, "A priced route without payment: 402 Payment Required")
        self.out.request("GET", f"{self.stack.gateway_url}{PAID_PATH}", "no payment header")
        response = self.http.get(PAID_PATH)
        self.out.status(response.status_code, response.reason_phrase)
        header = response.headers.get(PAYMENT_REQUIRED)
        if not self.out.check(
            response.status_code == 402 and bool(header),
            f"402 with a {PAYMENT_REQUIRED} challenge",
            f"expected 402 with {PAYMENT_REQUIRED}, got {response.status_code}",
        ):
            return None
        challenge = decode_payment_required_header(str(header))
        accept = challenge.accepts[0]
        if not isinstance(accept, PaymentRequirements):
            self.out.fail("the challenge's first option is not a v2 requirement")
            return None
        self.out.line(f"  {PAYMENT_REQUIRED}, decoded:")
        self.out.fields(
            [
                ("price", f"{usd(int(accept.amount), DECIMALS)}  ({accept.amount} atomic units)"),
                ("scheme", accept.scheme),
                ("network", f"{accept.network}  (anvil, same id as Base Sepolia)"),
                ("asset", f"{accept.asset}  ({(accept.extra or {}).get('name', '?')})"),
                ("pay to", accept.pay_to),
                ("valid for", f"{accept.max_timeout_seconds} s"),
            ]
        )
        self.out.check(
            accept.network == self.chain.network
            and same_address(accept.asset, self.chain.token)
            and same_address(accept.pay_to, self.stack.payee),
            "network, asset and recipient are the demo's",
            f"unexpected requirement: {accept.network} {accept.asset} {accept.pay_to}",
        )
        return response

    def paid(self, challenge: httpx.Response) -> tuple[dict[str, str], str] | None:
        self.out.heading(3, "The same request, paid with the x402 SDK's client")
        url = f"{self.stack.gateway_url}{PAID_PATH}"
        headers, payload = self.sign(challenge)
        amount = int(payload.accepted.amount) if isinstance(payload, PaymentPayload) else 0
        self.out.note(f"the payer {self.stack.payer} signs an EIP-3009 authorization")
        before = self.balances()
        self.out.request("GET", url, "with PAYMENT-SIGNATURE")
        started = time.perf_counter()
        response = self.http.get(PAID_PATH, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        self.out.status(response.status_code, f"{response.reason_phrase}  ({elapsed:.0f} ms)")
        body = body_of(response)
        self.out.json(body)
        settled = response.headers.get(PAYMENT_RESPONSE)
        if not self.out.check(
            response.status_code == 200 and bool(settled),
            f"200 with a {PAYMENT_RESPONSE} header",
            f"expected 200 with {PAYMENT_RESPONSE}, got {response.status_code}",
        ):
            return None
        result = decode_payment_response_header(str(settled))
        after = self.balances()
        self.out.fields(
            [
                ("transaction", result.transaction),
                ("payer", result.payer),
                ("network", result.network),
            ]
        )
        if timing := response.headers.get("Server-Timing"):
            self.out.field("server timing", timing)
        self.show_balances("before", before)
        self.show_balances("after", after)
        receipt = rpc_call(self.chain.rpc_url, "eth_getTransactionReceipt", [result.transaction])
        self.out.check(
            result.success
            and is_tx_hash(result.transaction)
            and bool(receipt)
            and int(receipt.get("status", "0x0"), 16) == 1,
            "the transfer is mined on the chain (receipt status 1)",
            f"no successful receipt for transaction {result.transaction!r}",
        )
        self.out.check(
            moved_exactly(before, after, amount),
            f"exactly {usd(amount, DECIMALS)} moved from payer to payee, in one settlement",
            f"balances moved unexpectedly: before {before}, after {after}, price {amount}",
        )
        served_to = body.get("served_to") if isinstance(body, dict) else None
        self.out.check(
            same_address(served_to, self.stack.payer),
            "the origin saw the payer's address, in X-Payer",
            f"the origin saw X-Payer={served_to!r}, not the payer",
        )
        return headers, result.transaction

    def replay(self, headers: dict[str, str], first_tx: str) -> None:
        self.out.heading(4, "The same payment sent again: refused, nothing charged")
        before = self.balances()
        self.out.request("GET", f"{self.stack.gateway_url}{PAID_PATH}", "same PAYMENT-SIGNATURE")
        response = self.http.get(PAID_PATH, headers=headers)
        self.out.status(response.status_code, response.reason_phrase)
        body = body_of(response)
        if isinstance(body, dict):
            for key in ("reason", "error", "detail"):
                if body.get(key):
                    self.out.field(key, body[key])
        after = self.balances()
        self.show_balances("now", after)
        self.out.check(
            response.status_code in REFUSED,
            f"refused with {response.status_code}",
            f"expected 402 or 409, got {response.status_code}",
        )
        if settled := response.headers.get(PAYMENT_RESPONSE):
            # A gateway may point the payer at the settlement it already made for this payment.
            earlier = decode_payment_response_header(settled).transaction
            self.out.check(
                earlier == first_tx,
                f"its {PAYMENT_RESPONSE} names the first settlement, not a new one",
                f"the replay's {PAYMENT_RESPONSE} names {earlier}, not {first_tx}",
            )
        self.out.check(
            after == before,
            "no balance moved and the facilitator broadcast nothing",
            f"the replay changed the chain: before {before}, after {after}",
        )

    def try_it(self) -> None:
        """Copy-paste commands for a person, with one fresh payment signed for them."""
        gw = self.stack.gateway_url
        self.out.heading(None, "Try it yourself (the stack keeps running; Ctrl-C stops it)")
        self.out.line("  A free route, then a priced one (402 and its challenge):")
        self.out.command(f"curl -s {gw}/api/status")
        self.out.command(f"curl -si {gw}{TRY_PATH}")
        self.out.command(
            f"curl -si -X POST -H 'Content-Type: application/json' "
            f'-d \'{{"text": "hello world", "to": "fr"}}\' {gw}/api/translate'
        )
        challenge = self.http.get(TRY_PATH)
        if challenge.status_code == 402:
            headers, _ = self.sign(challenge)
            (name, value), *_ = headers.items()
            self.out.line("  A payment signed for you (it works once; send it twice to see why):")
            self.out.command(f"curl -si -H '{name}: {value}' {gw}{TRY_PATH}")
        self.out.line("  The paywall, in a browser:")
        self.out.command(f"{gw}{TRY_PATH}")
        self.out.line("  Health and metrics:")
        self.out.command(
            f"curl -s {self.stack.admin_url}/readyz; curl -s {self.stack.admin_url}/metrics"
        )
        self.out.note(f"payer key (anvil test key #2, local chain only): {PAYER_KEY}")
        self.out.note(f"chain RPC: {self.chain.rpc_url}   token: {self.chain.token}")


def _payer_account() -> LocalAccount:
    account: LocalAccount = Account.from_key(PAYER_KEY)
    return account


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so `finally` stops every process.
    raise KeyboardInterrupt


def follow_log(stack: Stack, out: Printer) -> None:
    """Print the gateway's log lines, shortened, as requests come in (until Ctrl-C)."""
    out.heading(None, "Gateway log (Ctrl-C to stop everything)")
    with stack.gateway_log.open(encoding="utf-8", errors="replace") as log:
        log.seek(0, 2)
        while True:
            line = log.readline()
            if not line:
                for name, process in stack.processes:
                    if process.poll() is not None:
                        raise DemoError(f"the {name} exited with code {process.returncode}")
                time.sleep(0.2)
                continue
            short = format_log_line(line)
            out.note(short if short is not None else line.rstrip())


def show_logs(stack: Stack, out: Printer) -> None:
    """After a failure: the end of each process's log, and where the whole logs are."""
    for name, _ in stack.processes:
        out.heading(None, f"Last lines of the {name}'s log")
        for line in stack.tail(name, 12).splitlines():
            out.note(format_log_line(line) or line)
    out.note(f"process logs kept in {stack.logs}")


def start(stack: Stack, out: Printer) -> LocalChain:
    config = config_path()
    out.heading(0, "Starting everything on 127.0.0.1 (offline)")
    t0 = time.perf_counter()
    chain = stack.start_chain()
    out.field("chain", f"anvil {chain.rpc_url}  (chain id {chain.chain_id})")
    out.field("test USDC", f"{chain.token}  (EIP-3009, 6 decimals)")
    out.field("payer", f"{stack.payer}  (holds {usd(chain.balance_of(stack.payer), DECIMALS)})")
    out.field("payee", stack.payee)
    out.field("settler", f"{chain.facilitator_address}  (the facilitator's gas account)")
    stack.start_origin()
    out.field("origin", f"{stack.origin_url}  (gateway/demo/origin.py, no payment code)")
    stack.start_gateway(config)
    out.field("gateway", f"{stack.gateway_url}  (x402-gateway serve --config {config.name})")
    out.field("admin", f"{stack.admin_url}/healthz  /readyz  /metrics")
    out.note(f"ready in {time.perf_counter() - t0:.1f} s; process logs in {stack.logs}")
    return chain


def run_demo(once: bool) -> int:
    """The demo; 0 when every step went as shown, 1 otherwise."""
    out = Printer()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must reach us even when started with SIGINT ignored (`cmd &` in a script).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    stack: Stack | None = None
    walk: Walkthrough | None = None
    started = time.perf_counter()
    walked = False  # every step ran and passed: Ctrl-C after that is the normal way out
    try:
        stack = Stack(choose_ports())
        chain = start(stack, out)
        walk = Walkthrough(stack, chain, out)
        walk.free()
        challenge = walk.unpaid()
        paid = walk.paid(challenge) if challenge is not None else None
        if paid is not None:
            walk.replay(*paid)
        permit2_step(out, walk.http, stack, chain)
        channel_step(out, walk.http, stack, chain)
        ok = not out.failures
        summary = "every step went as shown" if ok else f"{len(out.failures)} step(s) failed"
        out.heading(
            None, f"{'OK' if ok else 'FAILED'}: {summary} ({time.perf_counter() - started:.1f} s)"
        )
        if once or not ok:
            return 0 if ok else 1
        walked = True
        walk.try_it()
        follow_log(stack, out)
        return 0
    except KeyboardInterrupt:
        out.line()
        out.note("stopping...")
        return 0 if walked else 1
    except (DemoError, ChainError, httpx.HTTPError, OSError, ValueError) as exc:
        out.fail(f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if walk is not None:
            walk.close()
        if stack is not None:
            if out.failures:
                show_logs(stack, out)
            stack.stop()
            if not out.failures:
                shutil.rmtree(stack.logs, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
