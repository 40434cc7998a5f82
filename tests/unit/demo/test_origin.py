"""The demo origin: a plain JSON API that only echoes the payer header it is given."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from gateway.demo.origin import create_origin_app, forecast, translate

Client = Callable[..., Awaitable[TestClient]]  # pytest-aiohttp's aiohttp_client


@pytest.fixture
async def client(aiohttp_client: Client) -> TestClient:
    return await aiohttp_client(create_origin_app())


async def test_status_is_plain_json(client: TestClient) -> None:
    response = await client.get("/api/status")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"


async def test_forecast_echoes_the_payer_header(client: TestClient) -> None:
    payer = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    response = await client.get("/api/forecast/Lisbon", headers={"X-Payer": payer})
    assert response.status == 200
    body = await response.json()
    assert body["city"] == "Lisbon"
    assert body["served_to"] == payer
    assert len(body["forecast"]) == 7


async def test_forecast_without_payer_says_none(client: TestClient) -> None:
    body = await (await client.get("/api/forecast/oslo")).json()
    assert body["served_to"] is None


def test_forecast_is_stable_per_city_and_sane() -> None:
    assert forecast("Paris") == forecast("paris")
    assert forecast("Paris") != forecast("Lima")
    for day in forecast("Reykjavik"):
        assert isinstance(day["low_c"], int) and isinstance(day["high_c"], int)
        assert day["high_c"] > day["low_c"]


async def test_translate(client: TestClient) -> None:
    response = await client.post("/api/translate", json={"text": "hello world", "to": "fr"})
    assert response.status == 200
    assert (await response.json())["translation"] == "bonjour monde"


@pytest.mark.parametrize(
    "payload",
    [{"text": 5}, {"text": "hi", "to": "xx"}, ["hello"], "hello"],
)
async def test_translate_rejects_bad_input(client: TestClient, payload: object) -> None:
    response = await client.post("/api/translate", json=payload)
    assert response.status == 400
    assert "error" in await response.json()


async def test_translate_rejects_non_json(client: TestClient) -> None:
    response = await client.post("/api/translate", data=b"not json")
    assert response.status == 400


async def test_translate_body_is_bounded(client: TestClient) -> None:
    response = await client.post("/api/translate", data=b"x" * (64 * 1024))
    assert response.status == 413


def test_translate_keeps_unknown_words() -> None:
    assert translate("Hello gateway", "de") == "hallo gateway"


async def test_weather_is_today_s_forecast_for_the_payer(client: TestClient) -> None:
    response = await client.get("/api/weather/lisbon", headers={"X-Payer": "0xabc"})
    assert response.status == 200
    body = await response.json()
    assert body == {
        "city": "lisbon",
        "now": forecast("lisbon", 1)[0]["conditions"],
        "served_to": "0xabc",
    }
