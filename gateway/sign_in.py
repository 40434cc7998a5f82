"""Sign-In-With-X (`access: {for: ...}`): pay once, then sign in for the access window.

Which payer a SIWX proof signs in (`signed_in`), and the 402's SIWX challenge
(`with_sign_in`); the payment it rests on is remembered when it settles (gateway/paid.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from gateway import answers
from gateway.config.settings import RouteSettings
from gateway.errors import SignInRefused
from gateway.generation import PAYMENT_HEADERS, Generation
from gateway.payment.sessions import HEADER as SIWX_HEADER


async def signed_in(
    gw: Generation, route: RouteSettings, path: str, headers: Mapping[str, str], ip: str
) -> str | None:
    """The payer a SIWX proof signs in to this route, or None to go on to payment. A refused
    proof is the answer (402, with why) unless the request also carries a payment. A sign-in
    counts against the client IP's rates as a paid call does, once: before its proof is read
    (a flood of proofs costs no curve operation), or, beside a payment, once it is accepted
    (a refused one goes on to the payment, which is counted there)."""
    proof = headers.get(SIWX_HEADER)
    if proof is None or gw.sessions is None or route.access is None:
        return None
    paying = not headers.keys().isdisjoint(PAYMENT_HEADERS)  # C calls only, no generator
    limited = gw.limiter.enabled  # no rate configured: skip the call (it would return at once)
    if limited and not paying:
        await gw.limiter.check(route, ip)
    try:
        payer = await gw.sessions.sign_in(route, path, proof)
    except SignInRefused:
        if paying:
            return None
        raise
    if limited and paying:
        await gw.limiter.check(route, ip)
    return payer


async def with_sign_in(gw: Generation, resource: answers.PricedResource) -> answers.PricedResource:
    """The resource with a fresh SIWX challenge in its 402, for a route with `access`."""
    if gw.sessions is None:
        return resource
    extensions = await gw.sessions.extensions(resource.route, resource.url)
    return dataclasses.replace(resource, extensions=extensions)
