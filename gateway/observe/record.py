"""The typed record of one request: what the flow met on its way (its route, its claim on a
payment, the error it ended with) and how it ended. `app.handle()` fills it; the metrics and
the access line read it, so neither has to know where in the flow a fact was learnt.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.settings import RouteSettings
from gateway.errors import GatewayError, SignInRefused
from gateway.payment.outcome import Outcome, classify
from gateway.payment.paid_claim import Claim, StepTimings

NO_RESPONSE = 499  # the status logged when no response was sent (the client went away)
SIGNED_IN, SIGN_IN_REFUSED = "signed_in", "refused"  # a SIWX sign-in's outcomes


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    path: str  # the raw path, never the query: it may carry an origin's API key
    generation: int  # the config generation that served it
    route: RouteSettings | None = None  # None: no route matched (passed through free)
    claim: Claim | None = None  # set once the payment is claimed in the store
    error: GatewayError | None = None  # the answer the gateway gave on purpose, if any
    status: int | None = None  # None: no response was sent
    sent: int = 0  # body bytes sent
    seconds: float = 0.0  # the whole request, to the last byte
    signed_in: str | None = None  # the payer a SIWX proof signed in (served, nothing paid)

    @property
    def label(self) -> str:
        """The route's pattern (a bounded label), or `-` for an unrouted path."""
        return self.route.name if self.route is not None else "-"

    @property
    def status_code(self) -> int:
        return self.status if self.status is not None else NO_RESPONSE

    @property
    def client_gone(self) -> bool:
        return self.status is None

    @property
    def timings(self) -> StepTimings | None:
        return self.claim.timings if self.claim is not None else None

    @property
    def carried_payment(self) -> bool:
        """A priced route that got as far as a payment (claimed, or refused with a reason)."""
        priced = self.route is not None and not self.route.free
        if isinstance(self.error, SignInRefused):
            return False  # a sign-in, not a payment: see `sign_in`
        return priced and (self.claim is not None or self.error is not None)

    @property
    def sign_in(self) -> Outcome | None:
        """A SIWX sign-in's outcome: `signed_in`, or `refused` with its reason (a proof
        refused beside a payment is not one: the request went on to pay)."""
        if self.signed_in is not None:
            return Outcome(SIGNED_IN, "")
        if isinstance(self.error, SignInRefused):
            return Outcome(SIGN_IN_REFUSED, self.error.reason)
        return None

    def outcome(self) -> Outcome:
        status = self.claim.record.status if self.claim is not None else None
        return classify(self.error, status, client_gone=self.client_gone)
