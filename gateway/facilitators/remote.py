"""Facilitators over HTTP, on aiohttp (its client protocol, a session for /supported), with
failover.

Why not the SDK's `HTTPFacilitatorClient`: it speaks to one URL through its own httpx pool,
its `get_supported()` blocks the event loop, and it cannot tell "the facilitator said no"
from "the facilitator is down". This client implements the SDK's `FacilitatorClient`
protocol, so `x402ResourceServer` drives it unchanged.

Failover: endpoints are tried in order. A verify moves on after a connection error, a
timeout, a 5xx or an unreadable answer; a valid "invalid" answer is final. A settle moves on
only when the request never reached the endpoint (connection refused): after that, the
payment may already be on chain, so an unreadable or late answer is reported as an unknown
outcome (`SettlementPending`), never retried elsewhere. A failing endpoint sleeps for
`COOLDOWN` seconds unless every endpoint is asleep; the first request after that tries it
again.

The /verify and /settle POSTs go through `http1.JsonPoster` (aiohttp's client protocol and
parser, a request head built once per endpoint: a third of the session's CPU per call);
/supported, rare, through the aiohttp session.

Readiness (`ping`, behind /readyz): ready while at least one endpoint is usable, meaning it
has answered /supported and is not asleep. An endpoint whose cool-down is over but which
has not answered since it failed is asked /supported again first, so /readyz does not turn
ready merely because time passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from cachetools import LRUCache
from pydantic import BaseModel, ValidationError
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedKind,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from gateway.config.settings import RemoteFacilitatorSettings
from gateway.errors import FacilitatorUnavailable, SettlementPending
from gateway.facilitators.http1 import MAX_ANSWER, JsonPoster, NotSent
from gateway.observe.logs import get_logger

COOLDOWN = 10.0
PROBE_TIMEOUT = 1.5  # a readiness probe's /supported must fit inside /readyz's own bound
# Verify bodies kept for the settle of the same payment (at most this many in flight).
BODIES_KEPT = 1024
ModelT = TypeVar("ModelT", bound=BaseModel)
Payload = PaymentPayload | PaymentPayloadV1
Requirements = PaymentRequirements | PaymentRequirementsV1
# Told of each failed call: (endpoint URL, operation: verify, settle or supported).
FailureHook = Callable[[str, str], None]
log = get_logger("gateway.facilitator")


class _Unusable(Exception):
    """This endpoint could not give an answer; `reached` says whether it saw the request."""

    def __init__(self, detail: str, *, reached: bool) -> None:
        super().__init__(detail)
        self.reached = reached


@dataclass(slots=True)
class _Endpoint:
    settings: RemoteFacilitatorSettings
    asleep_until: float = 0.0
    supported: SupportedResponse | None = None
    failed: bool = False  # failed, and has not answered since
    # Built once from the frozen settings, not per call: the request head (may carry
    # secrets), the connections kept alive, the timeout.
    poster: JsonPoster = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.poster = JsonPoster(self.settings.url, self.settings.headers, self.settings.timeout)


class RemoteFacilitator:
    def __init__(
        self,
        endpoints: Sequence[RemoteFacilitatorSettings],
        on_failure: FailureHook | None = None,
        *,
        cooldown: float = COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoints = [_Endpoint(e) for e in endpoints]
        self._on_failure = on_failure
        self._session: aiohttp.ClientSession | None = None
        self._cooldown = cooldown
        self._clock = clock
        # get_supported()'s answer, built when an endpoint's /supported changes rather than
        # on each call (every verify and settle asks for it: ~9 µs of pydantic each time).
        self._merged: SupportedResponse | None = None
        # The body a verify sent, by the identity of its payload and requirements: the SDK
        # settles the same two objects, so the settle reuses it instead of dumping both
        # models again. Kept with the objects (an id is unique while they live), taken once.
        self._bodies: LRUCache[tuple[int, int], tuple[Payload, Requirements, bytes]] = LRUCache(
            BODIES_KEPT
        )

    @property
    def names(self) -> list[str]:
        return [e.settings.url for e in self._endpoints]

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.poster.close()
        if self._session is not None:
            await self._session.close()

    # --- the SDK's FacilitatorClient protocol -------------------------------------------

    async def verify(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> VerifyResponse:
        body = self._body(payload, requirements)
        key = (id(payload), id(requirements))
        self._bodies[key] = (payload, requirements, body)
        try:
            answer = await self._verify(body)
        except BaseException:
            self._bodies.pop(key, None)  # no settle follows: not kept for one
            raise
        if not answer.is_valid:
            self._bodies.pop(key, None)
        return answer

    async def _verify(self, body: bytes) -> VerifyResponse:
        errors: list[str] = []
        for endpoint in self._in_order():
            try:
                return await self._post(endpoint, "verify", body, VerifyResponse)
            except _Unusable as exc:
                errors.append(f"{endpoint.settings.url}: {exc}")
        raise FacilitatorUnavailable("; ".join(errors) or "no facilitator configured")

    async def settle(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> SettleResponse:
        body = self._settle_body(payload, requirements)
        errors: list[str] = []
        for endpoint in self._in_order():
            try:
                answer = await self._post(endpoint, "settle", body, SettleResponse)
            except _Unusable as exc:
                if exc.reached:
                    raise SettlementPending(
                        f"settlement outcome unknown ({endpoint.settings.url}: {exc})"
                    ) from exc
                errors.append(f"{endpoint.settings.url}: {exc}")
                continue
            if answer.success and not answer.transaction:
                raise SettlementPending(
                    f"{endpoint.settings.url} reported success without a transaction"
                )
            return answer
        raise FacilitatorUnavailable("; ".join(errors) or "no facilitator configured")

    def get_supported(self) -> SupportedResponse:
        """What every reachable endpoint supports (earlier endpoints first), from the cache
        that `refresh_supported()` fills: never blocks. The same object until an endpoint
        answers /supported again: callers read it, never change it."""
        if self._merged is None:
            self._merged = self._merge()
        return self._merged

    def _merge(self) -> SupportedResponse:
        kinds: list[SupportedKind] = []
        extensions: list[str] = []
        signers: dict[str, list[str]] = {}
        for endpoint in self._endpoints:
            if endpoint.supported is not None:
                kinds.extend(endpoint.supported.kinds)
                extensions.extend(endpoint.supported.extensions)
                for family, addrs in endpoint.supported.signers.items():
                    signers.setdefault(family, []).extend(addrs)
        return SupportedResponse(kinds=kinds, extensions=extensions, signers=signers)

    # --- ours ---------------------------------------------------------------------------

    async def refresh_supported(self) -> list[str]:
        """Ask every endpoint for /supported; returns one error line per endpoint that failed."""
        results = await asyncio.gather(*(self._fetch_supported(e) for e in self._endpoints))
        return [r for r in results if r]

    async def ping(self) -> None:
        """Raise unless some endpoint is usable now (see the module docstring)."""
        now = self._clock()
        due = [
            e
            for e in self._endpoints
            if e.asleep_until <= now and (e.supported is None or e.failed)
        ]
        errors = await asyncio.gather(*(self._fetch_supported(e, PROBE_TIMEOUT) for e in due))
        for endpoint, error in zip(due, errors, strict=True):
            if error and endpoint.supported is not None:
                # Known, and still failing (already counted by the hook): back to sleep.
                endpoint.asleep_until = self._clock() + self._cooldown
        now = self._clock()
        if not any(
            e.supported is not None and not e.failed and e.asleep_until <= now
            for e in self._endpoints
        ):
            raise FacilitatorUnavailable(
                "; ".join(filter(None, errors)) or "every facilitator failed recently"
            )

    async def _fetch_supported(self, endpoint: _Endpoint, within: float | None = None) -> str:
        assert self._session is not None
        url = endpoint.settings.url.rstrip("/") + "/supported"
        limit = endpoint.settings.timeout
        if within is not None:
            limit = min(limit, within)
        try:
            async with self._session.get(
                url,
                headers=dict(endpoint.settings.headers),
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                if resp.status != 200:
                    self._failed(endpoint, "supported")
                    return f"{url}: HTTP {resp.status}"
                endpoint.supported = SupportedResponse.model_validate_json(
                    await resp.content.read(MAX_ANSWER)
                )
                self._merged = None  # get_supported() merges the new answer in
                endpoint.failed = False
                return ""
        except (aiohttp.ClientError, TimeoutError, ValidationError, ValueError) as exc:
            self._failed(endpoint, "supported")
            return f"{url}: {exc.__class__.__name__}: {exc}"

    def _in_order(self) -> list[_Endpoint]:
        now = self._clock()
        awake = [e for e in self._endpoints if e.asleep_until <= now]
        return awake or list(self._endpoints)

    def _settle_body(self, payload: Payload, requirements: Requirements) -> bytes:
        """The verify's body when this payment was verified with these very objects."""
        kept = self._bodies.pop((id(payload), id(requirements)), None)
        if kept is not None and kept[0] is payload and kept[1] is requirements:
            return kept[2]
        return self._body(payload, requirements)

    @staticmethod
    def _body(
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> bytes:
        # Each model straight to JSON bytes (pydantic-core), spliced: the same document as
        # json.dumps(model_dump(...)) without a Python dict tree built and re-encoded per call.
        return b"".join(
            (
                b'{"x402Version":',
                str(int(payload.x402_version)).encode(),
                b',"paymentPayload":',
                payload.model_dump_json(by_alias=True, exclude_none=True).encode(),
                b',"paymentRequirements":',
                requirements.model_dump_json(by_alias=True, exclude_none=True).encode(),
                b"}",
            )
        )

    async def _post(self, endpoint: _Endpoint, op: str, body: bytes, model: type[ModelT]) -> ModelT:
        try:
            status, raw = await endpoint.poster.post(op, body)
        except NotSent as exc:
            self._sleep(endpoint, op)
            raise _Unusable(str(exc), reached=False) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._sleep(endpoint, op)
            raise _Unusable(f"{exc.__class__.__name__}: {exc}", reached=True) from exc
        # A 4xx with a well-formed answer is the facilitator saying "invalid": that is final.
        if status >= 500 or status not in (200, 400, 402, 422):
            self._sleep(endpoint, op)
            raise _Unusable(f"HTTP {status}", reached=True)
        try:
            answer = model.model_validate_json(raw)
        except ValidationError as exc:
            self._sleep(endpoint, op)
            raise _Unusable(f"unreadable {op} answer (HTTP {status})", reached=True) from exc
        endpoint.failed = False
        return answer

    def _sleep(self, endpoint: _Endpoint, op: str) -> None:
        endpoint.asleep_until = self._clock() + self._cooldown
        endpoint.failed = True
        log.warning(
            "facilitator_failed",
            facilitator=endpoint.settings.url,
            op=op,
            cooldown_s=self._cooldown,
        )
        self._failed(endpoint, op)

    def _failed(self, endpoint: _Endpoint, op: str) -> None:
        if self._on_failure is not None:
            self._on_failure(endpoint.settings.url, op)
