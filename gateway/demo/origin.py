"""The demo's origin: a small "legacy" JSON API that knows nothing about payments.

It stands for the API a gateway is put in front of: one free endpoint, two that the
gateway's config prices. The only trace of the gateway it shows is the payer's address,
which it echoes from the `X-Payer` request header (the gateway sets it; a client cannot).

    python -m gateway.demo.origin --port 8080
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence

from aiohttp import web

SERVICE = "acme-weather (legacy API, unchanged)"
PAYER_HEADER = "X-Payer"
MAX_TRANSLATE_BODY = 16 * 1024
CONDITIONS = ("sunny", "cloudy", "rain", "showers", "windy", "fog", "snow")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# A toy dictionary: enough to show a POST body going through the gateway and back.
DICTIONARY: dict[str, dict[str, str]] = {
    "fr": {
        "hello": "bonjour",
        "world": "monde",
        "thank": "merci",
        "you": "vous",
        "weather": "météo",
        "good": "bon",
        "morning": "matin",
        "rain": "pluie",
    },
    "de": {
        "hello": "hallo",
        "world": "Welt",
        "thank": "danke",
        "you": "dir",
        "weather": "Wetter",
        "good": "guten",
        "morning": "Morgen",
        "rain": "Regen",
    },
    "es": {
        "hello": "hola",
        "world": "mundo",
        "thank": "gracias",
        "you": "tú",
        "weather": "tiempo",
        "good": "buenos",
        "morning": "días",
        "rain": "lluvia",
    },
}


def forecast(city: str, days: int = 7) -> list[dict[str, object]]:
    """A made-up but stable forecast: the same city always gets the same week."""
    seed = hashlib.sha256(city.lower().encode()).digest()
    out: list[dict[str, object]] = []
    for i in range(days):
        low = seed[i] % 15 - 2
        out.append(
            {
                "day": DAYS[i % 7],
                "low_c": low,
                "high_c": low + 4 + seed[i + 7] % 9,
                "conditions": CONDITIONS[seed[i + 14] % len(CONDITIONS)],
            }
        )
    return out


def translate(text: str, to: str) -> str:
    words = DICTIONARY[to]
    return " ".join(words.get(w.lower(), w) for w in text.split())


def _payer(request: web.Request) -> str | None:
    return request.headers.get(PAYER_HEADER)


async def status(request: web.Request) -> web.Response:
    return web.json_response({"service": SERVICE, "status": "ok", "time": int(time.time())})


async def get_forecast(request: web.Request) -> web.Response:
    city = request.match_info["city"]
    return web.json_response(
        {"city": city, "forecast": forecast(city), "served_to": _payer(request)}
    )


async def get_report(request: web.Request) -> web.Response:
    city = request.match_info["city"]
    return web.json_response(
        {"city": city, "report": forecast(city, days=14), "served_to": _payer(request)}
    )


async def get_weather(request: web.Request) -> web.Response:
    """Current conditions: the cheap, frequent call a payment channel is for."""
    city = request.match_info["city"]
    today = forecast(city, days=1)[0]
    return web.json_response(
        {"city": city, "now": today["conditions"], "served_to": _payer(request)}
    )


async def post_translate(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_TRANSLATE_BODY:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_TRANSLATE_BODY, actual_size=request.content_length
        )
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": 'send JSON: {"text": ..., "to": "fr"}'}, status=400)
    text = body.get("text") if isinstance(body, dict) else None
    to = body.get("to", "fr") if isinstance(body, dict) else None
    if not isinstance(text, str) or to not in DICTIONARY:
        return web.json_response(
            {"error": f"need text (a string) and to (one of {', '.join(DICTIONARY)})"},
            status=400,
        )
    return web.json_response(
        {"text": text, "to": to, "translation": translate(text, to), "served_to": _payer(request)}
    )


def create_origin_app() -> web.Application:
    app = web.Application(client_max_size=MAX_TRANSLATE_BODY)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/forecast/{city}", get_forecast)
    app.router.add_post("/api/translate", post_translate)
    app.router.add_get("/api/report/{city}", get_report)
    app.router.add_get("/api/weather/{city}", get_weather)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo.origin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    web.run_app(create_origin_app(), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
