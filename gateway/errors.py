"""The gateway's one exception tree.

Every failure the request path can meet is one of these; `answers.error_response()` maps
them to HTTP in one place (x402 failures as 402 with a reason, the rest as
`application/problem+json`). Anything else escaping a handler is a bug, and shows as one.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base: an answer the gateway gives on purpose."""

    status: int = 500
    title: str = "Internal gateway error"
    reason: str = "internal_error"  # machine-readable slug
    retry_after: int | None = None

    def __init__(
        self,
        detail: str = "",
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if reason is not None:
            self.reason = reason
        # Extra response headers this answer must carry (e.g. PAYMENT-RESPONSE, Allow).
        self.headers: dict[str, str] = headers or {}


class ConfigError(Exception):
    """The configuration is invalid; `errors` holds every problem, each `file:line key: msg`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# --- the client's request is wrong -------------------------------------------------------


class BadRequest(GatewayError):
    status = 400
    title = "Bad request"
    reason = "bad_request"


class AmbiguousPath(BadRequest):
    """A path the gateway refuses to guess about (`%2F`, `\\`, NUL, double-encoding...)."""

    title = "Ambiguous request path"
    reason = "ambiguous_path"


class MethodNotAllowed(GatewayError):
    """The path is routed, but not for this method: never a free way around a price."""

    status = 405
    title = "Method not allowed"
    reason = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    title = "Request body too large"
    reason = "body_too_large"


class RequestTimeout(GatewayError):
    """The client stopped sending its request body (idle longer than `timeouts.request_body`)."""

    status = 408
    title = "Request timeout"
    reason = "request_timeout"


# --- x402: the payment is missing or wrong (402 with a challenge) ---------------------


class PaymentError(GatewayError):
    """Answered 402 with a fresh challenge whose `error` is `reason`."""

    status = 402
    title = "Payment required"
    reason = "payment_required"


class AllowanceRequired(PaymentError):
    """A Permit2 payment whose payer has not approved Permit2 for the token: 412 with the
    same challenge (as the x402 resource servers answer `permit2_allowance_required`), so the
    payer approves once (or pays with a sponsored approval) and sends the same payment again."""

    status = 412
    title = "Permit2 allowance required"
    reason = "permit2_allowance_required"


class MalformedPayment(PaymentError):
    """The payment header cannot be read at all. 400: it is not a payment."""

    status = 400
    title = "Malformed payment header"
    reason = "invalid_payload"


class SignInRefused(PaymentError):
    """A Sign-In-With-X proof was not accepted (bad, replayed, or its wallet has not paid for
    the route): 402 with a fresh challenge, so the client can pay or sign again."""

    title = "Sign-in refused"
    reason = "siwx_refused"


class PaymentConflict(GatewayError):
    """This payment is being used by a request in flight, or has already bought a response."""

    status = 409
    title = "Payment already used"
    reason = "payment_already_used"


class SettlementFailed(PaymentError):
    """The facilitator refused to settle: nothing was served."""

    title = "Settlement failed"
    reason = "settlement_failed"


class SettlementPending(GatewayError):
    """Broadcast but not confirmed: the client must not pay again."""

    status = 503
    title = "Settlement pending: do not pay again"
    reason = "settlement_pending"
    retry_after = 10


# --- something the gateway depends on failed (fail closed) -----------------------------


class UpstreamError(GatewayError):
    status = 502
    title = "Bad gateway"
    reason = "upstream_unreachable"


class UpstreamTimeout(GatewayError):
    status = 504
    title = "Gateway timeout"
    reason = "upstream_timeout"


class FacilitatorUnavailable(GatewayError):
    status = 503
    title = "Payment facilitator unavailable"
    reason = "facilitator_unavailable"
    retry_after = 5


class ChainUnavailable(GatewayError):
    """An RPC node could not answer a chain read (reconciliation): nothing is decided."""

    status = 503
    title = "Chain unavailable"
    reason = "chain_unavailable"
    retry_after = 5


class StoreUnavailable(GatewayError):
    status = 503
    title = "Payment store unavailable"
    reason = "store_unavailable"
    retry_after = 5


# --- too many requests ------------------------------------------------------------------


class TooManyRequests(GatewayError):
    """A payer or client IP is over its configured rate: refused before anything is verified,
    so a flood costs no facilitator call."""

    status = 429
    title = "Too many requests"
    reason = "rate_limited"

    def __init__(self, detail: str, retry_after: int, *, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.retry_after = retry_after


class PriceUnavailable(GatewayError):
    """A dynamically priced route's price could not be had (the hook is down, slow or said
    something that is not a price): fail closed, nothing is forwarded."""

    status = 503
    title = "Price unavailable"
    reason = "price_unavailable"
    retry_after = 5
