"""Sign-In-With-X (SIWX) access: pay once for a route, then sign in with the paying wallet
instead of paying again, for the route's `access: {for: ...}`.

Built on the SDK's `x402.extensions.sign_in_with_x`: its resource-server extension writes the
402's `sign-in-with-x` declaration (fresh nonce, issuedAt, `domain`/`uri` on `public_url`),
and its public `parse_siwx_header` and `validate_siwx_message` read and check a proof. What
the gateway does differently from the SDK's request hook, and why:
- the signature is checked here (EIP-4361 text, EIP-191 recovery with coincurve; see "the
  signature" below): the SDK's `verify_siwx_signature` spends about 9 ms of CPU per proof in
  the `siwe` package's URI grammar, which would make every proof a cheap way to burn the
  gateway's CPU; the unit tests hold the two to the same answers on the SDK's own proofs;
- the nonce is spent atomically in the store (`SET NX`), not checked and then recorded, so a
  proof sent to two replicas at once signs in once;
- payments are recorded per route (the priced pattern), with the route's window as expiry;
- the proof must name the requested path and one of the route's networks;
- the signature is checked before the payment records are read, so nobody but the wallet's
  owner learns whether it paid for a route;
- refusals say why (the SDK's hook swallows every error into "no access").
"""

from __future__ import annotations

import inspect
import re
from typing import Any
from urllib.parse import urlparse

from coincurve import PublicKey
from eth_hash.auto import keccak
from x402.extensions.sign_in_with_x import (
    SIGN_IN_WITH_X,
    CreateSIWxResourceServerExtensionOptions,
    DeclareSIWxOptions,
    InMemorySIWxStorage,
    SIWxPayload,
    create_siwx_resource_server_extension,
    declare_siwx_extension,
    normalize_configured_origin,
    parse_siwx_header,
    validate_siwx_message,
)
from x402.schemas import PaymentRequired, ResourceInfo
from x402.schemas.hooks import ServerPaymentRequiredContext

from gateway.config.settings import RouteSettings, Settings
from gateway.errors import SignInRefused
from gateway.payment.requirements import requirements_v2
from gateway.store.sessions import SessionStore

HEADER = SIGN_IN_WITH_X  # the request header a proof travels in
MAX_HEADER = 8192  # bytes; bounded before it is decoded
PROOF_SECONDS = 300  # a challenge's expirationTime; the SDK also refuses issuedAt older than 5 min
# A nonce must stay spent as long as its proof could still pass the age check.
NONCE_TTL = 2 * PROOF_SECONDS


class Sessions:
    """The SIWX side of one generation: the 402 declaration and the sign-in check."""

    def __init__(self, settings: Settings, store: SessionStore) -> None:
        self.store = store
        self.origin = normalize_configured_origin(settings.public_url or "http://localhost")
        # Only its declaration enrichment is used; see the module's docstring for why its
        # hooks are not (their storage is never called).
        self._extension = create_siwx_resource_server_extension(
            CreateSIWxResourceServerExtensionOptions(
                origin=self.origin, storage=InMemorySIWxStorage()
            )
        )
        self._declarations = {
            route.index: declare_siwx_extension(
                DeclareSIWxOptions(
                    network=_networks(route),
                    statement="Sign in to use what this wallet paid for",
                    expiration_seconds=PROOF_SECONDS,
                )
            )[SIGN_IN_WITH_X]
            for route in settings.routes
            if route.access is not None
        }

    async def extensions(self, route: RouteSettings, resource_url: str) -> dict[str, Any] | None:
        """The 402's `extensions` for `route`: a fresh SIWX challenge, or None."""
        declaration = self._declarations.get(route.index)
        if declaration is None:
            return None
        accepts = requirements_v2(route)
        resource = ResourceInfo(url=resource_url)
        context = ServerPaymentRequiredContext(
            requirements=accepts,
            resource_info=resource,
            error=None,
            payment_required_response=PaymentRequired(resource=resource, accepts=accepts),
        )
        info = self._extension.enrich_payment_required_response(declaration, context)
        if inspect.isawaitable(info):
            info = await info
        return {SIGN_IN_WITH_X: info}

    async def sign_in(self, route: RouteSettings, path: str, header: str) -> str:
        """The payer a proof signs in, or `SignInRefused` with the reason."""
        payload = _parse(header)
        validation = await validate_siwx_message(payload, self.origin)
        if not validation.is_valid:
            raise SignInRefused(
                validation.invalid_message or "invalid proof",
                reason=validation.invalid_reason or "invalid_siwx_message",
            )
        if urlparse(payload.uri).path != path:
            raise SignInRefused(
                f"the proof is for {urlparse(payload.uri).path}, not {path}",
                reason="invalid_siwx_uri_mismatch",
            )
        if payload.chain_id not in _networks(route):
            raise SignInRefused(
                f"{payload.chain_id} is not a network of this route",
                reason="invalid_siwx_unsupported_chain",
            )
        payer = signer_of(payload)
        if not await self.store.has_paid(route.name, payer):
            raise SignInRefused("no payment for this route on record", reason="siwx_not_paid")
        if not await self.store.spend_nonce(payload.nonce, NONCE_TTL):
            raise SignInRefused("this sign-in was already used", reason="siwx_nonce_used")
        return payer

    async def paid(self, route: RouteSettings, payer: str) -> None:
        """`payer` paid for `route`: sign-ins are accepted for the route's window."""
        if route.access is not None:
            await self.store.record_payment(route.name, payer, route.access.seconds)


# --- the signature --------------------------------------------------------------------
#
# A proof in the shape EIP-4361 and the SDK's clients give it (one line per field, an
# alphanumeric nonce, a checksummed address, an `eip155:<n>` chain, a 65-byte signature) is
# checked here: its EIP-4361 text is built from its fields and the EIP-191 signer recovered
# from it. Anything else is refused (the `siwe` package refuses those shapes too), so no proof
# can make the gateway take a slower road.

_NONCE = re.compile(r"[A-Za-z0-9]{8,}")
_CHAIN = re.compile(r"eip155:([0-9]{1,20})")


def eip4361_message(payload: SIWxPayload, chain_id: str) -> str:
    """The EIP-4361 ("Sign-In with Ethereum") text of a proof, as the spec lays it out."""
    head = f"{payload.domain} wants you to sign in with your Ethereum account:\n{payload.address}"
    head += f"\n\n{payload.statement}" if payload.statement is not None else "\n"
    lines = [
        f"URI: {payload.uri}",
        f"Version: {payload.version}",
        f"Chain ID: {chain_id}",
        f"Nonce: {payload.nonce}",
        f"Issued At: {payload.issued_at}",
    ]
    if payload.expiration_time:
        lines.append(f"Expiration Time: {payload.expiration_time}")
    if payload.not_before:
        lines.append(f"Not Before: {payload.not_before}")
    if payload.request_id is not None:
        lines.append(f"Request ID: {payload.request_id}")
    if payload.resources is not None:
        lines.append("\n".join(["Resources:", *(f"- {r}" for r in payload.resources)]))
    return head + "\n\n" + "\n".join(lines)


def _plain(payload: SIWxPayload) -> str | None:
    """The numeric chain id when the proof has the plain shape the fast path takes."""
    chain = _CHAIN.fullmatch(payload.chain_id)
    fields = [payload.domain, payload.uri, payload.version, payload.issued_at]
    fields += [payload.statement or "", payload.expiration_time or "", payload.not_before or ""]
    fields += [payload.request_id or "", *(payload.resources or [])]
    if chain is None or payload.version != "1" or not _NONCE.fullmatch(payload.nonce):
        return None
    if any("\n" in field or "\r" in field for field in fields):
        return None
    if not is_checksummed(payload.address):
        return None
    return str(int(chain.group(1)))


def signer_of(payload: SIWxPayload) -> str:
    """The proof's address when it signed the proof, else `SignInRefused`."""
    if _plain(payload) is None or _signature(payload.signature) is None:
        raise SignInRefused(
            "not an EIP-4361 proof of an externally owned account", reason="invalid_siwx_message"
        )
    if not fast_eoa_check(payload):
        raise SignInRefused("the signature is not the address's", reason="invalid_siwx_signature")
    return payload.address


def fast_eoa_check(payload: SIWxPayload) -> bool:
    """True when the plain-shaped proof is signed by its own address (EIP-191 personal_sign,
    recovered with coincurve: eth_account's `recover_message` does the same through layers
    of conversions that cost several times the curve operation)."""
    chain_id = _plain(payload)
    signature = _signature(payload.signature)
    if chain_id is None or signature is None:
        return False
    text = eip4361_message(payload, chain_id).encode()
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(text)).encode() + text)
    try:
        public = PublicKey.from_signature_and_message(signature, digest, hasher=None)
    except ValueError:
        return False
    signer = keccak(public.format(compressed=False)[1:])[-20:]
    return signer.hex() == payload.address[2:].lower()


def _signature(text: str) -> bytes | None:
    """65 bytes r || s || v (v 27/28 or 0/1) as coincurve wants them (v as 0/1), or None."""
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        return None
    if len(raw) != 65 or raw[64] not in (0, 1, 27, 28):
        return None
    return raw[:64] + bytes([raw[64] % 27 if raw[64] >= 27 else raw[64]])


def is_checksummed(address: str) -> bool:
    """EIP-55: each hex letter upper-case where the keccak of the lower-case address has a
    nibble >= 8 (eth_utils' `is_checksum_address` does it behind decorators at ~10x the
    cost; the unit tests compare the two)."""
    if len(address) != 42 or not address.startswith("0x"):
        return False
    digits = address[2:]
    lower = digits.lower()
    if any(c not in "0123456789abcdef" for c in lower):
        return False
    nibbles = keccak(lower.encode()).hex()
    return all(
        d == (c.upper() if int(n, 16) >= 8 else c)
        for d, c, n in zip(digits, lower, nibbles[:40], strict=True)
    )


def _networks(route: RouteSettings) -> list[str]:
    return sorted({req.network for req in route.accepts if req.network.startswith("eip155:")})


def _parse(header: str) -> SIWxPayload:
    if len(header) > MAX_HEADER:
        raise SignInRefused(f"longer than {MAX_HEADER} bytes", reason="invalid_siwx_header")
    try:
        return parse_siwx_header(header)
    except (ValueError, RecursionError) as exc:
        raise SignInRefused(str(exc)[:200], reason="invalid_siwx_header") from None
