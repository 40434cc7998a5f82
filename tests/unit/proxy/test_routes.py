"""The compiled route table: first match in file order, methods, 405, index shape."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.settings import Requirement, RouteSettings, Source
from gateway.errors import AmbiguousPath, ConfigError
from gateway.proxy.routes import Match, RouteTable

PRICE = (Requirement("exact", "eip155:84532", "0x" + "1" * 40, 1000, "0x" + "2" * 40),)


def _routes(*specs: tuple[str, Sequence[str] | None]) -> list[RouteSettings]:
    return [
        RouteSettings(i, path, None if methods is None else frozenset(methods), PRICE)
        for i, (path, methods) in enumerate(specs)
    ]


def _winner(table: RouteTable, method: str, path: str) -> int | None:
    route = table.match(method, path).route
    return None if route is None else route.index


def test_exact_matches_only_itself() -> None:
    table = RouteTable(_routes(("/v1/status", None)))
    assert _winner(table, "GET", "/v1/status") == 0
    for path in ("/v1/status/", "/v1/status/x", "/v1/statusx", "/v1", "/"):
        assert table.match("GET", path) == Match(None, None)


def test_wildcard_covers_prefix_slash_and_below() -> None:
    table = RouteTable(_routes(("/v1/forecast/*", None)))
    for path in ("/v1/forecast", "/v1/forecast/", "/v1/forecast/x", "/v1/forecast/x/y/"):
        assert _winner(table, "GET", path) == 0
    for path in ("/v1/forecastx", "/v1/forecas", "/v1", "/v1/", "/"):
        assert _winner(table, "GET", path) is None


def test_root_wildcard_matches_everything() -> None:
    table = RouteTable(_routes(("/*", None)))
    for path in ("/", "/a", "/a/b/c/", "/%C3%A9"):
        assert _winner(table, "DELETE", path) == 0


def test_first_match_in_file_order_wins() -> None:
    table = RouteTable(
        _routes(("/v1/*", None), ("/v1/forecast/*", None), ("/v1/forecast/today", None))
    )
    assert _winner(table, "GET", "/v1/forecast/today") == 0
    table = RouteTable(
        _routes(("/v1/forecast/today", None), ("/v1/forecast/*", None), ("/v1/*", None))
    )
    assert _winner(table, "GET", "/v1/forecast/today") == 0
    assert _winner(table, "GET", "/v1/forecast/tomorrow") == 1
    assert _winner(table, "GET", "/v1/other") == 2


def test_file_order_is_index_not_sequence_order() -> None:
    late, early = RouteSettings(5, "/a/*", None, ()), RouteSettings(2, "/a/b", None, PRICE)
    table = RouteTable([late, early])
    assert table.match("GET", "/a/b").route is early
    assert table.routes == (early, late)
    assert len(table) == 2


def test_methods_pick_among_matching_routes() -> None:
    table = RouteTable(_routes(("/a/*", ["POST"]), ("/a/b", ["GET"]), ("/*", ["PUT"])))
    assert _winner(table, "POST", "/a/b") == 0
    assert _winner(table, "GET", "/a/b") == 1
    assert _winner(table, "PUT", "/a/b") == 2
    assert table.match("DELETE", "/a/b") == Match(None, frozenset({"POST", "GET", "HEAD", "PUT"}))


def test_head_is_listed_when_get_is() -> None:
    table = RouteTable(_routes(("/a", ["GET"]), ("/b", ["HEAD"])))
    assert _winner(table, "HEAD", "/a") == 0
    assert table.match("GET", "/b") == Match(None, frozenset({"HEAD"}))


def test_unlisted_method_is_405_not_free() -> None:
    table = RouteTable(_routes(("/paid/*", ["GET"])))
    assert table.match("POST", "/paid/x") == Match(None, frozenset({"GET", "HEAD"}))
    assert table.match("get", "/paid/x").allowed == frozenset({"GET", "HEAD"})  # case-sensitive
    assert table.match("POST", "/elsewhere") == Match(None, None)


def test_unlisted_options_passes_through_free() -> None:
    table = RouteTable(_routes(("/paid/*", ["GET"])))
    assert table.match("OPTIONS", "/paid/x") == Match(None, None)
    listed = RouteTable(_routes(("/paid/*", ["GET", "OPTIONS"])))
    assert _winner(listed, "OPTIONS", "/paid/x") == 0
    everything = RouteTable(_routes(("/paid/*", None)))
    assert _winner(everything, "OPTIONS", "/paid/x") == 0


def test_method_only_known_to_a_catch_all() -> None:
    table = RouteTable(_routes(("/a", ["GET"]), ("/*", None)))
    assert _winner(table, "PROPFIND", "/a") == 1
    assert _winner(table, "GET", "/a") == 0


def test_case_insensitive_matching() -> None:
    routes = _routes(("/Paid/*", None), ("/status", None))
    insensitive = RouteTable(routes, case_insensitive=True)
    assert _winner(insensitive, "GET", "/PAID/x") == 0
    assert _winner(insensitive, "GET", "/paid") == 0
    assert _winner(insensitive, "GET", "/STATUS") == 1
    assert _winner(RouteTable(routes, True), "GET", "/PAID/x") == 0  # positional, as app.py does
    sensitive = RouteTable(routes)
    assert _winner(sensitive, "GET", "/PAID/x") is None
    assert _winner(sensitive, "GET", "/Paid/x") == 0


def test_path_parameters_that_change_the_price_are_ambiguous() -> None:
    table = RouteTable(_routes(("/paid", None), ("/api/*", None)))
    with pytest.raises(AmbiguousPath):
        table.match("GET", "/paid;jsessionid=1")
    # both readings land on the same route: nothing to guess about
    assert _winner(table, "GET", "/api/items;v=2/x") == 1
    assert _winner(table, "GET", "/other;x") is None


def test_invalid_patterns_are_refused_with_their_source() -> None:
    bad = RouteSettings(0, "/a/../b", None, (), source=Source("gw.yaml", 14))
    with pytest.raises(ConfigError) as info:
        RouteTable([bad, RouteSettings(1, "/x*", None, ())])
    assert len(info.value.errors) == 2
    assert info.value.errors[0].startswith("gw.yaml:14: routes[0].path")


def test_shadowed() -> None:
    table = RouteTable(
        _routes(
            ("/v1/*", ["GET"]),  # 0
            ("/v1/forecast/*", ["GET"]),  # 1: shadowed by 0
            ("/v1/forecast/today", ["POST"]),  # 2: not shadowed (method)
            ("/v1", ["HEAD"]),  # 3: shadowed by 0 (GET implies HEAD)
            ("/v2/x", None),  # 4
            ("/v2/x", ["GET"]),  # 5: shadowed by 4
            ("/v2/*", None),  # 6: not shadowed (exact does not cover a wildcard)
            ("/*", ["PUT"]),  # 7
            ("/v3", None),  # 8: not shadowed (needs every method)
            ("/v3", ["PUT"]),  # 9: shadowed by 7
        )
    )
    assert [(a.index, b.index) for a, b in table.shadowed()] == [(1, 0), (3, 0), (5, 4), (9, 7)]


# --- the index: cost does not grow with the table ------------------------------------------


def _big_table(n: int) -> RouteTable:
    specs: list[tuple[str, Sequence[str] | None]] = []
    for i in range(n):
        specs.append((f"/svc{i}/items/*", ["GET"]))
        specs.append((f"/svc{i}/status", None))
    specs.append(("/*", ["POST"]))
    return RouteTable(_routes(*specs))


def _lines_executed(call: Callable[[], Any]) -> int:
    """Python lines run in gateway/proxy/routes.py (and anything it calls) during `call`."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/svc3/status"),  # exact hit
        ("GET", "/svc3/items/a/b/c/d"),  # deep wildcard hit
        ("POST", "/nothing/here/at/all"),  # catch-all
        ("DELETE", "/svc3/items/x"),  # 405
        ("OPTIONS", "/svc3/items/x"),  # preflight
    ],
)
def test_lookup_cost_does_not_depend_on_table_size(method: str, path: str) -> None:
    small, large = _big_table(5), _big_table(5_000)
    assert len(large) == 10_001
    assert _summary(small.match(method, path)) == _summary(large.match(method, path))
    assert _lines_executed(lambda: small.match(method, path)) == _lines_executed(
        lambda: large.match(method, path)
    )


def _summary(match: Match) -> tuple[str | None, frozenset[str] | None]:
    return (match.route.path if match.route else None, match.allowed)


def test_lookup_touches_at_most_one_index_entry_per_segment() -> None:
    gets = 0

    class Counting(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            nonlocal gets
            gets += 1
            return super().get(key, default)

    def count_children(node: Any) -> None:
        node.children = Counting(node.children)
        for child in node.children.values():
            count_children(child)

    table = _big_table(5_000)
    table._exact = Counting(table._exact)
    count_children(table._root)
    table.match("GET", "/svc7/status")
    assert gets == 1  # the hot path: one exact lookup, no trie walk
    gets = 0
    table.match("GET", "/svc7/items/a/b/c")
    assert gets <= 1 + 3  # exact miss, then down the trie until it has no such segment


# --- against a brute-force reading of the spec ----------------------------------------------


def _pattern_matches(pattern: str, key: str) -> bool:
    if pattern == "/*":
        return True
    if pattern.endswith("/*"):
        base = pattern[:-2]
        return key == base or key.startswith(base + "/")
    return key == pattern


def _accepts(route: RouteSettings, method: str) -> bool:
    if route.methods is None:
        return True
    return method in route.methods or (method == "HEAD" and "GET" in route.methods)


def _reference_one(routes: Sequence[RouteSettings], method: str, key: str) -> Match:
    matching = sorted(
        (r for r in routes if _pattern_matches(r.path.lower(), key)), key=lambda r: r.index
    )
    for route in matching:
        if _accepts(route, method):
            return Match(route, None)
    if not matching or method == "OPTIONS":
        return Match(None, None)
    allowed: set[str] = set()
    for route in matching:
        assert route.methods is not None
        allowed |= route.methods | ({"HEAD"} if "GET" in route.methods else set())
    return Match(None, frozenset(allowed))


def _reference(routes: Sequence[RouteSettings], method: str, path: str) -> Match:
    key = path.lower()
    found = _reference_one(routes, method, key)
    if ";" in key:
        stripped = "/".join(s.split(";")[0] for s in key.split("/"))
        while "//" in stripped:
            stripped = stripped.replace("//", "/")
        if _reference_one(routes, method, stripped) != found:
            raise AmbiguousPath("reference")
    return found


_seg = st.sampled_from(["a", "b", "c"])


def _make_pattern(segments: list[str], kind: str) -> str:
    if not segments:
        return "/*" if kind == "/*" else "/"
    return "/" + "/".join(segments) + kind


_pattern = st.builds(_make_pattern, st.lists(_seg, max_size=3), st.sampled_from(["", "/*", "/"]))
_methods = st.one_of(
    st.none(), st.frozensets(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS"]), min_size=1)
)
_request_path = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(st.sampled_from(["a", "b", "c", "d", "a;x", "b;"]), max_size=4),
    st.booleans(),
)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(_pattern, _methods), min_size=1, max_size=8),
    st.lists(st.tuples(st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "PUT"]), _request_path)),
)
def test_index_agrees_with_brute_force(
    specs: list[tuple[str, frozenset[str] | None]], requests: list[tuple[str, str]]
) -> None:
    routes = [RouteSettings(i, p, m, PRICE) for i, (p, m) in enumerate(specs)]
    table = RouteTable(routes, case_insensitive=True)
    for method, path in requests:
        try:
            expected = _reference(routes, method, path)
        except AmbiguousPath:
            with pytest.raises(AmbiguousPath):
                table.match(method, path)
            continue
        assert table.match(method, path) == expected


def _reference_shadowed(routes: Sequence[RouteSettings]) -> list[tuple[int, int]]:
    def covers(wide: RouteSettings, narrow: RouteSettings) -> bool:
        if narrow.path.endswith("/*"):
            base = narrow.path[:-2]
            paths_ok = wide.path.endswith("/*") and _pattern_matches(wide.path, base or "/")
        else:
            paths_ok = _pattern_matches(wide.path, narrow.path)
        if wide.methods is None:
            return paths_ok
        if narrow.methods is None:
            return False
        methods = set(narrow.methods)
        return paths_ok and all(_accepts(wide, m) for m in methods)

    return [
        (r.index, next(e.index for e in routes[: r.index] if covers(e, r)))
        for r in routes
        if any(covers(e, r) for e in routes[: r.index])
    ]


@settings(max_examples=300)
@given(st.lists(st.tuples(_pattern, _methods), min_size=1, max_size=8))
def test_shadowed_agrees_with_brute_force(specs: list[tuple[str, frozenset[str] | None]]) -> None:
    routes = [RouteSettings(i, p, m, PRICE) for i, (p, m) in enumerate(specs)]
    found = [(a.index, b.index) for a, b in RouteTable(routes).shadowed()]
    assert found == _reference_shadowed(routes)


# --- issue 12 item 1: OPTIONS on priced paths ---------------------------------------------


def test_priced_allow_lists_the_paths_methods_when_a_price_applies() -> None:
    free = RouteSettings(3, "/free/*", None, ())
    table = RouteTable([*_routes(("/paid/*", ["GET", "POST"]), ("/all/*", None)), free])
    assert table.priced_allow("/paid/x") == {"GET", "HEAD", "POST", "OPTIONS"}
    assert table.priced_allow("/paid") == {"GET", "HEAD", "POST", "OPTIONS"}
    assert table.priced_allow("/all/x") == {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
    }
    assert table.priced_allow("/free/x") is None
    assert table.priced_allow("/elsewhere") is None


def test_priced_allow_follows_the_winner_and_case() -> None:
    free_first = RouteSettings(0, "/api/public/*", None, ())
    priced = RouteSettings(1, "/api/*", frozenset({"GET"}), PRICE)
    table = RouteTable([free_first, priced], case_insensitive=True)
    assert table.priced_allow("/api/public/x") is None  # every method is free there
    assert table.priced_allow("/API/x") == {"GET", "HEAD", "OPTIONS"}


def test_priced_allow_refuses_what_path_parameters_would_change() -> None:
    table = RouteTable(_routes(("/paid/*", ["GET"])))
    with pytest.raises(AmbiguousPath):
        table.priced_allow("/paid;x/y")


def test_price_cells_name_the_hook_and_every_scheme_but_exact() -> None:
    from gateway.config import loads
    from gateway.proxy.routes import price_cell

    settings = loads(
        """
upstream: http://127.0.0.1:9
facilitator: {url: http://127.0.0.1:9}
pay_to: "0x209693bc6afc0c5328ba36faf03c514ef312287c"
channels: {authorizer_key: "0x%s"}
routes:
  - {path: /plain/*, price: "$0.001"}
  - {path: /channel/*, price: "$0.001", channel: {min_deposit: "$1"}}
  - {path: /hook/*, price: {hook: "http://127.0.0.1:9100/price"}}
  - {path: /free/*, price: free}
"""
        % ("11" * 32)
    )
    cells = [price_cell(route) for route in settings.routes]
    usdc = "$0.001 (1000 atomic units of USDC)"
    assert cells == [
        usdc,
        f"{usdc} | batch-settlement {usdc}",
        "hook http://127.0.0.1:9100/price",
        "free",
    ]
