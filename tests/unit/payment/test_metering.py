"""gateway.payment.metering: what a metered (upto) response costs, from what its origin states."""

from __future__ import annotations

import pytest

from gateway.config.settings import Metered
from gateway.payment.metering import from_header, stated_amount, usage
from tests.unit.wire_helpers import requirement

MAX = requirement(scheme="upto", amount=100_000)
TERMS = Metered(default=10_000)


@pytest.mark.parametrize(
    ("header", "amount"),
    [
        ('{"amount": "12300"}', 12_300),
        ('{"amount": 12300}', 12_300),
        ('{"amount": "$0.0123"}', 12_300),
        ('{"amount": "50%"}', 50_000),
        ('{"amount": "12.5%"}', 12_500),
        ('{"amount": "0"}', 0),
        (None, 10_000),
    ],
)
def test_stated_amounts_resolve_as_the_spec_defines(header: str | None, amount: int) -> None:
    used = from_header(header, MAX, TERMS)
    assert (used.amount, used.capped, used.problem) == (amount, False, None)


def test_more_than_the_maximum_is_capped() -> None:
    for stated in ('{"amount": "100001"}', '{"amount": "$1"}', '{"amount": "150%"}'):
        used = from_header(stated, MAX, TERMS)
        assert (used.amount, used.capped) == (100_000, True)


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        "[]",
        '{"amt": 1}',
        '{"amount": "-5"}',
        '{"amount": "12.5"}',
        '{"amount": true}',
        '{"amount": "33.333%"}',
        '{"amount": "' + "9" * 2000 + '"}',
    ],
)
def test_an_unreadable_statement_charges_the_default_and_says_why(header: str) -> None:
    used = from_header(header, MAX, TERMS)
    assert used.amount == 10_000 and used.problem and not used.capped


def test_without_a_configured_default_nothing_stated_costs_the_maximum() -> None:
    assert usage(None, None, MAX, Metered(default=100_000)).amount == 100_000
    assert stated_amount(None) == (None, None)
