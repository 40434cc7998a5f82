"""gateway.config.cors: the `cors:` section (issue 12 item 4)."""

from __future__ import annotations

import pytest

from gateway.config.settings import Cors
from tests.unit.config.test_config import MARK, errors, loads, marked_line, text_with


def test_default_lets_any_page_read_the_gateways_answers() -> None:
    assert loads(text_with()).cors == Cors(origins=("*",), credentials=False, max_age=600.0)


def test_explicit_origins_credentials_and_max_age() -> None:
    cors = loads(
        text_with(
            cors='{origins: ["https://Shop.example", "http://localhost:3000", '
            '"https://shop.example"], credentials: true, max_age: 1m}'
        )
    ).cors
    assert cors.origins == ("https://shop.example", "http://localhost:3000")
    assert cors.credentials is True and cors.max_age == 60.0
    assert not cors.any_origin


@pytest.mark.parametrize(
    ("value", "where", "says"),
    [
        ('{origins: ["*"], credentials: true}', "cors.credentials", "needs explicit origins"),
        ("{credentials: true}", "cors.credentials", "needs explicit origins"),
        ('{origins: ["https://shop.example/app"]}', "cors.origins[0]", "no path"),
        ('{origins: ["shop.example"]}', "cors.origins[0]", "not an origin"),
        ("{origins: https://shop.example}", "cors.origins", "must be a list"),
        ("{max_age: soon}", "cors.max_age", "soon"),
        ("{allow: everyone}", "cors.allow", "unknown key"),
    ],
)
def test_errors_name_the_line_and_key(value: str, where: str, says: str) -> None:
    text = text_with(cors=f"{value} {MARK}")
    (problem,) = errors(text)
    assert problem.startswith(f"gateway.yaml:{marked_line(text)} {where}: "), problem
    assert says in problem
