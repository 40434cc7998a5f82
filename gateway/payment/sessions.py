"""Sign-In-With-X (SIWX) access: pay once for a route, then sign in with the paying wallet
instead of paying again, for the route's `access: {for: ...}`.

Built on the SDK's `x402.extensions.sign_in_with_x`: its resource-server extension writes the
402's `sign-in-with-x` declaration (fresh nonce, issuedAt, `domain`/`uri` on `public_url`),
and its public `parse_siwx_header` and `validate_siwx_message` read and check a proof. What
the gateway does differently from the SDK's request hook, and why:
- the signature is checked in gateway/payment/siwx_proof.py (EIP-4361 text, EIP-191
  recovery with coincurve): the SDK's `verify_siwx_signature` spends about 9 ms of CPU per
  proof in the `siwe` package's URI grammar, which would make every proof a cheap way to
  burn the gateway's CPU; the unit tests hold the two to the same answers on the SDK's own proofs;
- the nonce is spent atomically in the store (`SET NX`), not checked and then recorded, so a
  proof sent to two replicas at once signs in once; the same store call (in Redis the
  `EXISTS` pipelined after it) reads the payment record, so a sign-in costs one round trip;
- payments are recorded per route (its pattern, and its methods when it names them; a
  route priced per request, per price: `paid_for`), with the route's window as expiry;
- the proof must name the requested path and one of the route's networks;
- the signature is checked before the payment records are read, so nobody but the wallet's
  owner learns whether it paid for a route;
- refusals say why (the SDK's hook swallows every error into "no access");
- a plain proof (the shape the SDK's clients send, for a URI without a query) is read and
  checked without pydantic or `urlparse` (`read_plain`, `_passes`): that road only
  accepts, a proof it would not accept goes the SDK's road for the answer (and its reason);
  in the gateway, with the caches cold between requests, it halves the CPU of a sign-in's
  reading and field checks.
"""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

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
from gateway.payment.siwx_proof import PlainProof, Wallets, read_plain, signer_of
from gateway.store.sessions import SessionStore, SignIn

HEADER = SIGN_IN_WITH_X  # the request header a proof travels in
MAX_HEADER = 8192  # bytes; bounded before it is decoded
PROOF_SECONDS = 300  # a challenge's expirationTime; the SDK also refuses issuedAt older than 5 min
# A nonce must stay spent as long as its proof could still pass the age check.
NONCE_TTL = 2 * PROOF_SECONDS
MAX_AGE_MS = 5 * 60 * 1000  # the SDK's `validate_siwx_message`: issuedAt at most 5 min old
# A request path `urlparse` gives back whole from `origin + path` (no query, fragment or
# params to split off, no tab or line break it would drop).
_PLAIN_PATH = re.compile(r"/[^\t\r\n;?#]*")


class Sessions:
    """The SIWX side of one generation: the 402 declaration and the sign-in check."""

    def __init__(
        self, settings: Settings, store: SessionStore, wallets: Wallets | None = None
    ) -> None:
        self.store = store
        self.wallets = wallets if wallets is not None else Wallets()
        self.origin = normalize_configured_origin(settings.public_url or "http://localhost")
        self._domain = urlparse(self.origin).netloc  # what a proof's `domain` must be
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
        self._chains = {
            route.index: frozenset(_networks(route))
            for route in settings.routes
            if route.access is not None
        }
        self._paid_for = {
            route.index: paid_for(route) for route in settings.routes if route.access is not None
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
        """The payer a proof signs in, or `SignInRefused` with the reason. The proof is read
        once; its signature is checked before the store is asked anything (no nonce spent by
        a bad proof, no "who paid" answer to anyone but the wallet's owner); then one store
        call spends the nonce and reads the payment record."""
        if len(header) > MAX_HEADER:
            raise SignInRefused(f"longer than {MAX_HEADER} bytes", reason="invalid_siwx_header")
        plain = read_plain(header)
        payload: PlainProof | SIWxPayload
        if plain is not None and self._passes(plain, route, path):
            payload = plain
        else:  # the SDK's road: its answer, and its reason for a refusal
            payload = _parse(header)
            await self._check_fields(payload, route, path)
        payer = signer_of(payload, self.wallets)
        answer = await self.store.sign_in(self._label(route), payer, payload.nonce, NONCE_TTL)
        if answer is SignIn.NONCE_USED:
            raise SignInRefused("this sign-in was already used", reason="siwx_nonce_used")
        if answer is SignIn.NOT_PAID:
            raise SignInRefused("no payment for this route on record", reason="siwx_not_paid")
        return payer

    async def _check_fields(self, payload: SIWxPayload, route: RouteSettings, path: str) -> None:
        """The proof's own fields: the SDK's checks (origin, age), then this request's."""
        validation = await validate_siwx_message(payload, self.origin)
        if not validation.is_valid:
            raise SignInRefused(
                validation.invalid_message or "invalid proof",
                reason=validation.invalid_reason or "invalid_siwx_message",
            )
        signed_path = urlparse(payload.uri).path
        if signed_path != path:
            raise SignInRefused(
                f"the proof is for {signed_path}, not {path}", reason="invalid_siwx_uri_mismatch"
            )
        if payload.chain_id not in self._chains.get(route.index, ()):
            raise SignInRefused(
                f"{payload.chain_id} is not a network of this route",
                reason="invalid_siwx_unsupported_chain",
            )

    def _passes(self, proof: PlainProof, route: RouteSettings, path: str) -> bool:
        """True when `_check_fields` would pass the proof (the SDK's checks: domain, URI on
        `public_url`'s origin, issuedAt at most 5 minutes old and not in the future, not
        expired, not before its notBefore; and this request's: path, network). False
        whenever it might not: `_check_fields` then gives the answer."""
        uri, signed = proof.uri, self.origin + path
        if proof.domain != self._domain or not _PLAIN_PATH.fullmatch(path):
            return False
        if not (uri == signed or uri.startswith(signed + "?")):
            return False
        if proof.chain_id not in self._chains.get(route.index, ()):
            return False
        return _in_time(proof, datetime.now(UTC))

    async def paid(self, route: RouteSettings, payer: str) -> None:
        """`payer` paid for `route`: sign-ins are accepted for the route's window."""
        if route.access is not None:
            await self.store.record_payment(self._label(route), payer, route.access.seconds)

    def _label(self, route: RouteSettings) -> str:
        """`paid_for(route)`, made once per route of the config (a dynamic route's each
        time: it names the price this request resolved to)."""
        if route.dynamic:
            return paid_for(route)
        return self._paid_for.get(route.index) or paid_for(route)


def paid_for(route: RouteSettings) -> str:
    """What a route's payments are recorded under: its pattern, and its methods when it names
    them (two routes may share a pattern with methods and prices of their own: GET for
    $0.01, POST for $5; a payment for one must not sign its payer in to the other), and its
    price when it is priced per request."""
    label = route.path  # alone, as before: the records of routes on every method stay valid
    if route.methods is not None:
        label += f" {','.join(sorted(route.methods))}"
    if route.dynamic:
        # A route priced per request (`price_by`, a price hook), as resolved for this one:
        # each price its own access, or the cheapest paid once would open the dearest.
        label += f" @{','.join(str(req.amount) for req in route.accepts)}"
    return label


def _networks(route: RouteSettings) -> list[str]:
    return sorted({req.network for req in route.accepts if req.network.startswith("eip155:")})


def _in_time(proof: PlainProof, now: datetime) -> bool:
    """The SDK's time checks, as it makes them (`datetime.fromisoformat`, UTC if naive).
    issuedAt, in every proof, read here rather than through `_instant`: one Python call
    less per sign-in (the same parse, the same answer)."""
    try:
        issued = datetime.fromisoformat(proof.issued_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    if issued.tzinfo is None:
        issued = issued.replace(tzinfo=UTC)
    if not 0 <= (now - issued).total_seconds() * 1000 <= MAX_AGE_MS:
        return False
    if proof.expiration_time:
        expires = _instant(proof.expiration_time)
        if expires is None or expires < now:
            return False
    if proof.not_before:
        not_before = _instant(proof.not_before)
        if not_before is None or now < not_before:
            return False
    return True


def _instant(text: str) -> datetime | None:
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def _parse(header: str) -> SIWxPayload:
    try:
        return parse_siwx_header(header)
    except (ValueError, RecursionError) as exc:
        raise SignInRefused(str(exc)[:200], reason="invalid_siwx_header") from None
