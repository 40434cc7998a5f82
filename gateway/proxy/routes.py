"""The compiled price table: which route a (method, canonical path) falls under.

Patterns: an exact path (`/v1/status`) matches only itself; `/prefix/*` matches `/prefix`,
`/prefix/` and everything below it; `/*` matches every path. Among the routes whose pattern
matches the path and whose `methods` accept the method (None: all; HEAD counts as listed when
GET is), the first in file order (`RouteSettings.index`) wins.

What `RouteTable.match(method, path)` answers, and what the gateway does with it:

* `Match(route, None)`: that route prices (or frees) the request.
* `Match(None, None)`: no pattern matches the path at all. Unpriced paths pass through free.
  Also returned for an `OPTIONS` that no matching route lists; but where a price applies to
  some method of the path, `RouteTable.priced_allow(path)` says so first and the gateway
  answers the OPTIONS itself (`Allow`, or a CORS preflight), never forwarding it and never
  answering 402 (issue 12 item 1).
* `Match(None, allowed)`: some pattern matches the path but no such route accepts the method;
  answer 405 with `Allow: <allowed>`. A method a priced route does not list is therefore never
  a free way around its price.
* It raises AmbiguousPath (400) when the path has `;` path parameters and the table would
  price it differently depending on whether the origin strips them (`/paid;x` is `/paid` to
  Tomcat but a different path to most others): the gateway refuses to guess.

The index is built once: a dict of exact paths and a segment trie of wildcard prefixes. Each
entry already merges every route that covers it (an exact path's entry includes the wildcards
above it; a prefix's entry includes its ancestors) and holds the answer for each method, so a
lookup is two dict gets for an exact hit, otherwise one per path segment down the trie to the
deepest wildcard on the path; its cost does not depend on the number of routes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from gateway.config.settings import RouteSettings, Settings
from gateway.errors import AmbiguousPath, ConfigError
from gateway.formats import format_price
from gateway.proxy.paths import check_pattern, match_key, strip_params


@dataclass(frozen=True, slots=True)
class Match:
    route: RouteSettings | None  # the winning route
    allowed: (
        frozenset[str] | None
    )  # set when some route's pattern matched but none lists this method


NO_ROUTE = Match(None, None)
# `Allow` where some route takes every method.
ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class _Entry:
    """The precomputed answer for every path that lands on one index key."""

    by_method: dict[str, Match]  # every method some route lists, plus OPTIONS
    default: Match  # any other method
    # `Allow` when some method is priced on these paths, else None (issue 12 item 1).
    priced_allow: frozenset[str] | None = None


class _Node:
    """One segment of the wildcard trie; `entry` is set where a `/prefix/*` pattern ends."""

    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.entry: _Entry | None = None


def _accepted(route: RouteSettings) -> frozenset[str] | None:
    if route.methods is None:
        return None
    methods = frozenset(m.upper() for m in route.methods)
    return methods | {"HEAD"} if "GET" in methods else methods


def _ancestors(key: str) -> Iterator[str]:
    """Wildcard prefixes that cover `key`, deepest first: `/a/b` -> `/a/b`, `/a`, `` (root)."""
    if not key.endswith("/"):
        yield key
    cut = key.rfind("/")
    while cut >= 0:
        yield key[:cut]
        cut = key.rfind("/", 0, cut)


class RouteTable:
    """Routes compiled for matching; build once at start-up, share read-only."""

    __slots__ = ("_accepts", "_case_insensitive", "_exact", "_root", "routes")

    def __init__(self, routes: Sequence[RouteSettings], case_insensitive: bool = False) -> None:
        problems = [
            f"{route.source or 'routes'}: routes[{route.index}].path {route.path!r}: {problem}"
            for route in routes
            if (problem := check_pattern(route.path)) is not None
        ]
        if problems:
            raise ConfigError(problems)
        self.routes: tuple[RouteSettings, ...] = tuple(sorted(routes, key=lambda r: r.index))
        self._case_insensitive = case_insensitive
        self._accepts = {id(r): _accepted(r) for r in self.routes}

        exact_routes: dict[str, list[RouteSettings]] = {}
        prefix_routes: dict[str, list[RouteSettings]] = {}
        for route in self.routes:
            wildcard, key = self._pattern_key(route)
            (prefix_routes if wildcard else exact_routes).setdefault(key, []).append(route)

        methods = {"OPTIONS"}
        for accepted in self._accepts.values():
            methods.update(accepted or ())
        interned: dict[tuple[int, frozenset[str] | None], Match] = {}
        self._exact = {
            key: self._entry(self._covering(key, own, prefix_routes), methods, interned)
            for key, own in exact_routes.items()
        }
        self._root = _Node()
        for key in prefix_routes:
            node = self._root
            for segment in key.split("/")[1:]:  # the root prefix `` has no segment
                node = node.children.setdefault(segment, _Node())
            node.entry = self._entry(self._covering(key, [], prefix_routes), methods, interned)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, method: str, path: str) -> Match:
        """The route for `method` on the canonical `path` (see the module docstring)."""
        key = match_key(path, self._case_insensitive)
        found = self._lookup(method, key)
        if ";" in key:
            other = self._lookup(method, strip_params(key))
            if other.route is not found.route or other.allowed != found.allowed:
                raise AmbiguousPath("path parameters (';') change which route prices this path")
        return found

    def priced_allow(self, path: str) -> frozenset[str] | None:
        """The methods routed at the canonical `path` when a price applies to at least one of
        them, else None. An OPTIONS there is answered by the gateway (`Allow`, or a CORS
        preflight), never forwarded: a method-agnostic origin would serve it the paid content.
        """
        key = match_key(path, self._case_insensitive)
        entry = self._find(key)
        allow = entry.priced_allow if entry is not None else None
        if ";" in key:
            other = self._find(strip_params(key))
            if allow != (other.priced_allow if other is not None else None):
                raise AmbiguousPath("path parameters (';') change which route prices this path")
        return allow

    def shadowed(self) -> list[tuple[RouteSettings, RouteSettings]]:
        """(route, earlier route) pairs where the earlier one wins every request of the later.

        Only single-route cover is found; a route covered by several earlier ones together
        (one per method, say) is not reported.
        """
        exact_routes: dict[str, list[RouteSettings]] = {}
        prefix_routes: dict[str, list[RouteSettings]] = {}
        for route in self.routes:
            wildcard, key = self._pattern_key(route)
            (prefix_routes if wildcard else exact_routes).setdefault(key, []).append(route)
        found: list[tuple[RouteSettings, RouteSettings]] = []
        for route in self.routes:
            wildcard, key = self._pattern_key(route)
            own = [] if wildcard else exact_routes[key]
            for earlier in self._covering(key, own, prefix_routes):
                if earlier.index >= route.index:
                    break
                if self._covers_methods(earlier, route):
                    found.append((route, earlier))
                    break
        return found

    def _lookup(self, method: str, key: str) -> Match:
        entry = self._find(key)
        if entry is None:
            return NO_ROUTE
        return entry.by_method.get(method, entry.default)

    def _find(self, key: str) -> _Entry | None:
        entry = self._exact.get(key)
        if entry is None:
            # The deepest wildcard on the path wins: its entry already merges its ancestors.
            node = self._root
            entry = node.entry
            for segment in key.split("/")[1:]:
                child = node.children.get(segment)
                if child is None:
                    break
                node = child
                if node.entry is not None:
                    entry = node.entry
        return entry

    def _pattern_key(self, route: RouteSettings) -> tuple[bool, str]:
        wildcard = route.path.endswith("/*")
        pattern = route.path[:-2] if wildcard else route.path
        return wildcard, match_key(pattern, self._case_insensitive)

    @staticmethod
    def _covering(
        key: str, own: Iterable[RouteSettings], prefix_routes: dict[str, list[RouteSettings]]
    ) -> list[RouteSettings]:
        """`own` plus every wildcard route above `key`, in file order."""
        routes = list(own)
        for prefix in _ancestors(key):
            routes.extend(prefix_routes.get(prefix, ()))
        return sorted(routes, key=lambda r: r.index)

    def _covers_methods(self, earlier: RouteSettings, later: RouteSettings) -> bool:
        wide, narrow = self._accepts[id(earlier)], self._accepts[id(later)]
        return wide is None or (narrow is not None and narrow <= wide)

    def _entry(
        self,
        routes: list[RouteSettings],
        methods: set[str],
        interned: dict[tuple[int, frozenset[str] | None], Match],
    ) -> _Entry:
        def make(route: RouteSettings | None, allowed: frozenset[str] | None) -> Match:
            # Shared Match objects keep 10,000 entries x methods small.
            return interned.setdefault((id(route), allowed), Match(route, allowed))

        allowed = frozenset().union(*(self._accepts[id(r)] or () for r in routes))
        any_method = next((r for r in routes if self._accepts[id(r)] is None), None)
        by_method: dict[str, Match] = {}
        for method in methods:
            winner = next(
                (r for r in routes if (a := self._accepts[id(r)]) is None or method in a), None
            )
            if winner is not None:
                by_method[method] = make(winner, None)
            elif method == "OPTIONS":
                by_method[method] = NO_ROUTE
            else:
                by_method[method] = make(None, allowed)
        default = make(any_method, None) if any_method else make(None, allowed)
        return _Entry(by_method, default, _priced_allow(allowed, by_method, default))


def _priced_allow(
    allowed: frozenset[str], by_method: dict[str, Match], default: Match
) -> frozenset[str] | None:
    winners = [*(m.route for m in by_method.values()), default.route]
    if not any(route is not None and not route.free for route in winners):
        return None
    every = default.route is not None  # some route takes any method
    return ALL_METHODS if every else allowed | {"OPTIONS"}


def price_cell(route: RouteSettings) -> str:
    """A route's price as `check` shows it: a hook's price is the hook's (its template's
    amount is a placeholder), and each way to pay that is not `exact` names its scheme (a
    channel route offers `exact` and `batch-settlement` at the same price)."""
    if route.free:
        return "free"
    if route.price_hook is not None:
        return route.price_text
    return " | ".join(
        format_price(a) if a.scheme == "exact" else f"{a.scheme} {format_price(a)}"
        for a in route.accepts
    )


def route_rows(settings: Settings) -> list[dict[str, str]]:
    """The route table as text cells (`x402-gateway routes` and `check`, the admin `/routes`)."""
    return [
        {
            "index": str(r.index),
            "methods": ",".join(sorted(r.methods)) if r.methods else "*",
            "path": r.path,
            "price": price_cell(r),
            "settle": "-" if r.free else r.settle,
            "upstream": r.upstream or settings.upstream,
        }
        for r in settings.routes
    ]
