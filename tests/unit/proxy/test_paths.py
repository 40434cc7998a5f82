"""Canonical paths: every spelling of a priced path is either refused or priced the same."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.config.settings import Requirement, RouteSettings
from gateway.errors import AmbiguousPath
from gateway.proxy.paths import canonicalize, check_pattern, match_key, strip_params
from gateway.proxy.routes import RouteTable

PRICE = (Requirement("exact", "eip155:84532", "0x" + "1" * 40, 1000, "0x" + "2" * 40),)


def _table(case_insensitive: bool = False) -> RouteTable:
    routes = [
        RouteSettings(0, "/paid/*", None, PRICE),
        RouteSettings(1, "/free/*", None, ()),
        RouteSettings(2, "/v1/models/a:generate", None, PRICE),
    ]
    return RouteTable(routes, case_insensitive=case_insensitive)


REJECT = "reject"
AMBIGUOUS = "ambiguous-match"

# (raw target, expected canonical path or REJECT, route pattern that must win or None)
TRICKS: list[tuple[str, str, str | None]] = [
    ("/paid/../free", "/free", "/free/*"),
    ("/free/../paid", "/paid", "/paid/*"),
    ("/free/./../paid/x", "/paid/x", "/paid/*"),
    ("/%70aid", "/paid", "/paid/*"),
    ("/%70%61%69%64/x", "/paid/x", "/paid/*"),
    ("/PAID", "/PAID", None),  # case-sensitive origin: a different resource, not /paid
    ("//paid", "/paid", "/paid/*"),
    ("///paid//x//", "/paid/x/", "/paid/*"),
    ("/paid%2Fx", REJECT, None),
    ("/paid%2fx", REJECT, None),
    ("/paid%5cx", REJECT, None),
    ("/paid%5Cx", REJECT, None),
    ("/paid\\x", REJECT, None),
    ("/%2e%2e/paid", REJECT, None),
    ("/free/../../paid", REJECT, None),
    ("/..", REJECT, None),
    ("/free/%2e%2e/paid", "/paid", "/paid/*"),
    ("/free/%2E%2e/paid", "/paid", "/paid/*"),
    ("/free/.%2e/paid", "/paid", "/paid/*"),
    ("/paid%00", REJECT, None),
    ("/paid%09", REJECT, None),
    ("/paid%7F", REJECT, None),
    ("/paid%0d%0aX-Injected:%201", REJECT, None),
    ("/paid\x00", REJECT, None),
    ("/paid\t", REJECT, None),
    ("/paid%252e", REJECT, None),
    ("/paid%252F", REJECT, None),
    ("/paid/%25%32%65", REJECT, None),  # %2e hidden one level deeper
    ("/paid/%25", "/paid/%25", "/paid/*"),  # a lone encoded '%' is not double encoding
    ("http://evil/paid", REJECT, None),
    ("paid", REJECT, None),
    ("*", REJECT, None),
    ("", REJECT, None),
    ("/paid/./x", "/paid/x", "/paid/*"),
    ("/./paid", "/paid", "/paid/*"),
    ("/paid/x/.", "/paid/x/", "/paid/*"),
    ("/paid;x", "/paid;x", AMBIGUOUS),  # `/paid` to Tomcat, something else to others
    ("/paid;/../free", "/free", "/free/*"),  # `paid;` is a whole segment: `..` removes it
    ("/free/..;/paid", REJECT, None),
    ("/free/..;x/paid", REJECT, None),
    ("/free/.%3B/paid", REJECT, None),
    ("/free/...;/paid", REJECT, None),
    ("/free/..%20/paid", REJECT, None),
    ("/free/%20../paid", REJECT, None),
    ("/paid/a%20b", "/paid/a%20b", "/paid/*"),  # a space inside a segment is fine
    ("/paid/..x/.x/x..y", "/paid/..x/.x/x..y", "/paid/*"),
    # Issue 12 item 3: what Windows/IIS reads as another path is refused.
    ("/paid/%20", REJECT, None),  # a trailing space
    ("/paid/x..", REJECT, None),  # trailing dots
    ("/paid./x", REJECT, None),
    ("/paid../x", REJECT, None),
    ("/paid%2e/x", REJECT, None),
    ("/paid%2E%20/x", REJECT, None),
    ("/paid.%20./x", REJECT, None),
    ("/paid.", REJECT, None),
    ("/paid.;x/y", REJECT, None),  # the dot is last once Tomcat drops the parameters
    ("/paid::$DATA/x", REJECT, None),  # NTFS streams
    ("/paid:$i30:$INDEX_ALLOCATION/x", REJECT, None),
    ("/paid%3A%24DATA/x", REJECT, None),
    ("/PAID-A~1/x", REJECT, None),  # 8.3 short names
    ("/paid-a~1/x", REJECT, None),
    ("/x/REPORT~2.TXT", REJECT, None),
    ("/~user/x", "/~user/x", None),  # `~` elsewhere is fine
    ("/a~b/c~", "/a~b/c~", None),
    ("/toolongname~1/x", "/toolongname~1/x", None),  # 7+ characters: not an 8.3 name
    ("/v1/file.json", "/v1/file.json", None),
    ("/v1/a:b$c", "/v1/a:b$c", None),
    ("/free/..%2fpaid", REJECT, None),
    ("/%2E%2E%2Fpaid", REJECT, None),
    ("/free/%C0%AE%C0%AE/paid", REJECT, None),  # overlong UTF-8 '.'
    ("/free/%EF%BC%8E%EF%BC%8E/paid", REJECT, None),  # full-width '.', NFKC folds it
    ("/%EF%BD%90aid", REJECT, None),  # full-width 'p'
    ("/paid/caf\u00e9", REJECT, None),  # raw non-ASCII
    ("/paid/caf%c3%a9", "/paid/caf%C3%A9", "/paid/*"),
    ("/paid%", REJECT, None),
    ("/paid%4", REJECT, None),
    ("/paid%zz", REJECT, None),
    ("/paid/%7e", "/paid/~", "/paid/*"),
    ("/paid/%3a%40", "/paid/:@", "/paid/*"),
    ("/paid/a|b", "/paid/a%7Cb", "/paid/*"),
    ("/paid/%3f", "/paid/%3F", "/paid/*"),
    ("/paid/%3b", "/paid/%3B", "/paid/*"),
    ("/v1/models/a%3Agenerate", "/v1/models/a:generate", "/v1/models/a:generate"),
    ("/v1/models/a%3agenerate", "/v1/models/a:generate", "/v1/models/a:generate"),
    ("/free#/../paid", "/free", "/free/*"),  # the fragment never reaches the origin
    ("/paid/x?q=/../free", "/paid/x", "/paid/*"),
    ("/freeloader", "/freeloader", None),  # not under /free/
    ("/.well-known/x402", "/.well-known/x402", None),
]


@pytest.mark.parametrize(("target", "canonical", "pattern"), TRICKS)
def test_path_tricks(target: str, canonical: str, pattern: str | None) -> None:
    if canonical == REJECT:
        with pytest.raises(AmbiguousPath):
            canonicalize(target)
        return
    path, _ = canonicalize(target)
    assert path == canonical
    assert canonicalize(path) == (path, "")
    table = _table()
    if pattern == AMBIGUOUS:
        with pytest.raises(AmbiguousPath):
            table.match("GET", path)
        return
    route = table.match("GET", path).route
    assert (route.path if route else None) == pattern


@pytest.mark.parametrize("target", ["/PAID", "/Paid/X", "/%50AID", "/pAiD/../PAID/x"])
def test_case_tricks_priced_when_origin_is_case_insensitive(target: str) -> None:
    path, _ = canonicalize(target)
    route = _table(case_insensitive=True).match("GET", path).route
    assert route is not None and route.path == "/paid/*"
    assert path.lower().startswith("/paid")  # forwarding keeps the case as sent


def test_query_is_kept_byte_for_byte() -> None:
    assert canonicalize("/a?x=%2f&y=%zz&z=..//") == ("/a", "x=%2f&y=%zz&z=..//")
    assert canonicalize("/a?") == ("/a", "")
    assert canonicalize("/a") == ("/a", "")
    assert canonicalize("/%2e/a?b#frag") == ("/a", "b")
    with pytest.raises(AmbiguousPath):
        canonicalize("/a?x=\x01")
    with pytest.raises(AmbiguousPath):
        canonicalize("/a?x=caf\u00e9")


def test_root_and_trailing_slashes() -> None:
    assert canonicalize("/")[0] == "/"
    assert canonicalize("/a/..")[0] == "/"
    assert canonicalize("/a/")[0] == "/a/"
    assert canonicalize("/a//")[0] == "/a/"
    assert canonicalize("/a/b/..")[0] == "/a/"
    assert canonicalize("/%2e")[0] == "/"


def test_match_key_and_strip_params() -> None:
    assert match_key("/PAID/%7C", case_insensitive=True) == "/paid/%7c"
    assert match_key("/PAID", case_insensitive=False) == "/PAID"
    assert strip_params("/a;x=1/b;y/c") == "/a/b/c"
    assert strip_params("/a/;x/b") == "/a/b"


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("/v1/forecast/*", None),
        ("/v1/status", None),
        ("/*", None),
        ("/", None),
        ("/v1/models/a:generate", None),
        ("/a%20b/*", None),
        ("v1/status", "must start with '/'"),
        ("/a/../b", "not canonical"),
        ("/a//b", "not canonical"),
        ("/a/./b", "not canonical"),
        ("/%70aid", "not canonical"),
        ("/a%3ab", "not canonical"),
        ("/a%2fb", "not a valid request path"),
        ("/a\\b", "not a valid request path"),
        ("/a*", "only a wildcard"),
        ("/a/*/b", "only a wildcard"),
        ("/a;b", "path parameters"),
        ("/a?x=1", "query"),
        ("/v1//*", "wildcard already covers"),
        ("/..", "not a valid request path"),
    ],
)
def test_check_pattern(pattern: str, problem: str | None) -> None:
    result = check_pattern(pattern)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


# --- properties --------------------------------------------------------------------------

TRICKY_ALPHABET = "/.%25eEfFcCab;~?#0:@|\\x\x00\u00e9" + string.ascii_letters


@settings(max_examples=400)
@given(st.text(alphabet=TRICKY_ALPHABET, max_size=30))
def test_canonicalize_is_idempotent_on_anything(tail: str) -> None:
    try:
        path, _ = canonicalize("/" + tail)
    except AmbiguousPath:
        return
    assert canonicalize(path) == (path, "")
    assert path.startswith("/") and "//" not in path
    assert all(seg not in (".", "..") for seg in path.split("/"))


_PLAIN = string.ascii_letters + string.digits + "-._~!$&'()*+,=:@"
# Characters the canonical form keeps as escapes, as their canonical escape.
_KEPT_ESCAPES = ["%20", "%3F", "%23", "%3B", "%25", "%C3%A9", "%7C"]
_DOTLIKE_BASE = re.compile(r"(?:\.|%20)+(?:;|%3B|$)")


def _plausible(segment: str) -> bool:
    """Not a segment the gateway refuses on purpose (dot-like, double-encoded)."""
    return not _DOTLIKE_BASE.match(segment) and not re.search(r"%25[0-9a-fA-F]{2}", segment)


_segment = (
    st.lists(
        st.one_of(st.sampled_from(_PLAIN + ";"), st.sampled_from(_KEPT_ESCAPES)),
        min_size=1,
        max_size=6,
    )
    .map("".join)
    .filter(_plausible)
)


def _hex(code: int, draw_case: bool) -> str:
    text = f"{code:02X}"
    return "%" + (text.lower() if draw_case else text)


@st.composite
def _spelling(draw: st.DrawFn, canonical: str) -> str:
    """A different but equivalent spelling of the canonical path."""
    out: list[str] = []
    i = 0
    while i < len(canonical):
        char = canonical[i]
        if char == "%":
            escape = canonical[i : i + 3]
            spellings = [escape, escape.lower()]
            if escape == "%7C":
                spellings.append("|")  # sent raw by some clients, canonically encoded
            out.append(draw(st.sampled_from(spellings)))
            i += 3
            continue
        if char == "/":
            out.append("/")
            for _ in range(draw(st.integers(0, 2))):
                out.append(
                    draw(
                        st.sampled_from(
                            ["/", "./", "%2e/", "%2E/", "j/../", "j/%2e%2E/", "j/.%2e/"]
                        )
                    )
                )
        elif char == ";":
            out.append(";")  # `;` and `%3B` are different paths: never respelled
        elif draw(st.booleans()):
            out.append(_hex(ord(char), draw(st.booleans())))
        else:
            out.append(char)
        i += 1
    return "".join(out)


@st.composite
def _priced_path_and_spelling(draw: st.DrawFn) -> tuple[str, str]:
    segments = draw(st.lists(_segment, min_size=0, max_size=4))
    canonical = "/paid" + "".join("/" + s for s in segments)
    if draw(st.booleans()):
        canonical += "/"
    try:
        canonicalize(canonical)
    except AmbiguousPath:  # a segment Windows would read as another (`x.`, `A~1`): refused
        assume(False)
    return canonical, draw(_spelling(canonical))


@settings(max_examples=400)
@given(_priced_path_and_spelling(), st.booleans())
def test_no_spelling_of_a_priced_path_reaches_the_origin_unpriced(
    case: tuple[str, str], case_insensitive: bool
) -> None:
    canonical, spelled = case
    assert canonicalize(canonical) == (canonical, "")
    table = _table(case_insensitive)
    try:
        path, _ = canonicalize(spelled)
    except AmbiguousPath:
        return
    assert path == canonical  # the origin gets the very path that was priced
    try:
        route = table.match("GET", path).route
    except AmbiguousPath:
        return
    assert route is not None and route.path == "/paid/*"


_HOSTILE = ["%2F", "%2f", "%5C", "%5c", "\\", "%00", "%252e", "%252F", "..;/", "%C0%AE", "%0A"]


@settings(max_examples=300)
@given(_priced_path_and_spelling(), st.sampled_from(_HOSTILE), st.integers(0, 10_000))
def test_ambiguous_pieces_anywhere_are_refused(
    case: tuple[str, str], piece: str, where: int
) -> None:
    _, spelled = case
    if piece == "..;/":  # only a whole segment can be read as `..`
        slashes = [i + 1 for i, c in enumerate(spelled) if c == "/"]
        at = slashes[where % len(slashes)]
    else:
        at = 1 + where % len(spelled)
    with pytest.raises(AmbiguousPath):
        canonicalize(spelled[:at] + piece + spelled[at:])


@settings(max_examples=200)
@given(_priced_path_and_spelling())
def test_case_flips_are_priced_when_case_insensitive(case: tuple[str, str]) -> None:
    canonical, _ = case
    path, _ = canonicalize(canonical.swapcase())
    try:
        route = _table(case_insensitive=True).match("GET", path).route
    except AmbiguousPath:
        assert ";" in path
        return
    assert route is not None and route.path == "/paid/*"
