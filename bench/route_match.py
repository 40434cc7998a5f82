"""Route matching cost at 10 and 10,000 routes: `python -m bench.route_match`.

`measure(n_routes, kind)` returns nanoseconds per `RouteTable.match` call; the harness calls
it. Kinds: `exact` (a hit on an exact route), `wildcard` (a path three segments below a
`/prefix/*` route), `miss` (a path no route covers: walks every prefix up to the root).
The probe hits the middle route of the table so that nothing favours the first entries.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/route_match.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config.settings import Requirement, RouteSettings
from gateway.proxy.paths import canonicalize
from gateway.proxy.routes import RouteTable

KINDS = ("exact", "wildcard", "miss")
_PRICE = (Requirement("exact", "eip155:84532", "0x" + "1" * 40, 1000, "0x" + "2" * 40),)


def _table(n_routes: int, kind: str) -> tuple[RouteTable, str]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    suffix = "" if kind == "exact" else "/*"
    routes = [
        RouteSettings(i, f"/api/v1/svc{i}/items{suffix}", frozenset({"GET"}), _PRICE)
        for i in range(n_routes)
    ]
    middle = n_routes // 2
    probe = {
        "exact": f"/api/v1/svc{middle}/items",
        "wildcard": f"/api/v1/svc{middle}/items/42/detail/x",
        "miss": "/static/css/site/main.css",
    }[kind]
    return RouteTable(routes), probe


def measure(n_routes: int, kind: str) -> float:
    """Nanoseconds per match (best of 5 runs) with `n_routes` routes of `kind`."""
    table, probe = _table(n_routes, kind)
    match = table.match
    number = 200_000
    best = min(timeit.repeat(lambda: match("GET", probe), number=number, repeat=5))
    return best / number * 1e9


def _canonicalize_ns(target: str) -> float:
    number = 200_000
    return min(timeit.repeat(lambda: canonicalize(target), number=number, repeat=5)) / number * 1e9


def main() -> None:
    print(f"{'routes':>8} {'kind':>9} {'ns/match':>9}")
    for kind in KINDS:
        for n_routes in (10, 10_000):
            print(f"{n_routes:>8} {kind:>9} {measure(n_routes, kind):>9.0f}")
    for target in ("/api/v1/svc5/items?x=1", "/api/v1/%2e/svc5/./items%7e"):
        print(f"canonicalize {target!r}: {_canonicalize_ns(target):.0f} ns")


if __name__ == "__main__":
    main()
