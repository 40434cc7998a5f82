"""`GET /.well-known/x402`: every priced route with its terms and discovery metadata, from the
config alone (gateway/payment/discovery.py builds it). Public and cacheable: a strong ETag
(`If-None-Match` gets 304) and `Cache-Control: public`; any origin may read it. A route the
config gives this exact path keeps it (the origin then answers)."""

from __future__ import annotations

from aiohttp import web

from gateway.config.settings import Settings
from gateway.payment.challenge import PreparedChallenges
from gateway.payment.discovery import CACHE_CONTROL, WELL_KNOWN, well_known

ALLOWED = frozenset({"GET", "HEAD"})


def serves(settings: Settings, method: str, path: str) -> bool:
    """Whether the gateway itself answers this request with the discovery document."""
    if path != WELL_KNOWN or method not in ALLOWED:
        return False
    return not any(route.path == WELL_KNOWN for route in settings.routes)


def response(
    request: web.Request, settings: Settings, challenges: PreparedChallenges
) -> web.Response:
    base_url = challenges.resource_url(request, "", "")
    body, etag = well_known(settings, base_url)
    headers = {
        "ETag": etag,
        "Cache-Control": CACHE_CONTROL,
        "Access-Control-Allow-Origin": "*",
        "Vary": "Host, X-Forwarded-Host, X-Forwarded-Proto",
    }
    if etag in {t.strip() for t in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)
