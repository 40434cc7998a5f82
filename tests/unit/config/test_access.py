"""`access: {for: 24h}` on a route (SIWX sign-in after one payment) in the loader."""

from __future__ import annotations

from tests.unit.config.test_config import errors, loads, text_with, with_route


def test_access_is_read_in_seconds() -> None:
    route = '  - path: /reports/*\n    price: "$0.05"\n    access: {for: 24h}\n'
    settings = loads(text_with(public_url="https://api.example.com") + route)
    (route,) = [r for r in settings.routes if r.path == "/reports/*"]
    assert route.access is not None and route.access.seconds == 86400
    assert all(r.access is None for r in settings.routes if r.path != "/reports/*")


def test_access_needs_public_url() -> None:
    found = errors(with_route('path: /reports/*\nprice: "$0.05"\naccess: {for: 24h}'))
    assert any("public_url" in e and "routes[1].access" in e for e in found), found


def test_access_needs_a_price_and_a_duration() -> None:
    base = text_with(public_url="https://api.example.com")
    free = base + "  - path: /f/*\n    price: free\n    access: {for: 1h}\n"
    assert any("only a priced route" in e for e in errors(free))
    empty = base + '  - path: /r/*\n    price: "$1"\n    access: {}\n'
    assert any("access.for" in e for e in errors(empty))
    wrong = base + '  - path: /r/*\n    price: "$1"\n    access: {for: soon, until: 3}\n'
    found = errors(wrong)
    assert any("access.for" in e for e in found) and any("until" in e for e in found), found
