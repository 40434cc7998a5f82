"""Header hygiene: hop-by-hop, forwarding headers, trust, CORS exposure."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy import headers as hh

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def hdrs(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_response_strips_hop_by_hop_and_connection_named() -> None:
    incoming = hdrs(
        ("Content-Type", "text/plain"),
        ("Connection", "keep-alive, X-Internal"),
        ("connection", "x-other"),
        ("X-Internal", "secret"),
        ("X-Other", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
        ("TE", "trailers"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "12"),
    )
    out = hh.response_headers(incoming)
    assert list(out.items()) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "12"),
    ]


def test_connection_tokens_parse_all_lines() -> None:
    assert hh.connection_tokens(hdrs(("Connection", " A , b"), ("Connection", "C,,"))) == {
        "a",
        "b",
        "c",
    }
    assert hh.connection_tokens(hdrs()) == frozenset()


def test_request_untrusted_replaces_forwarding_and_host() -> None:
    incoming = hdrs(
        ("Host", "shop.example:8402"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=6.6.6.6"),
        ("Expect", "100-continue"),
        ("Accept", "*/*"),
    )
    out = hh.request_headers(incoming, peer="10.1.2.3", scheme="http", trusted=False)
    assert "Host" not in out
    assert "Expect" not in out
    assert out["Accept"] == "*/*"
    assert out.getall("X-Forwarded-For") == ["10.1.2.3"]
    assert out.getall("X-Forwarded-Proto") == ["http"]
    assert out.getall("X-Forwarded-Host") == ["shop.example:8402"]
    assert out.getall("Forwarded") == ['for=10.1.2.3;proto=http;host="shop.example:8402"']


def test_request_trusted_appends() -> None:
    incoming = hdrs(
        ("Host", "internal:8402"),
        ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"),
        ("X-Forwarded-For", "3.3.3.3"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "shop.example"),
        ("Forwarded", 'for=1.1.1.1;proto=https;host="shop.example"'),
    )
    out = hh.request_headers(incoming, peer="127.0.0.1", scheme="http", trusted=True)
    assert out["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "shop.example"
    assert out["Forwarded"] == (
        'for=1.1.1.1;proto=https;host="shop.example", for=127.0.0.1;proto=http;host="internal:8402"'
    )


def test_request_trusted_without_prior_values_sets_ours() -> None:
    out = hh.request_headers(hdrs(("Host", "h")), peer="127.0.0.1", scheme="https", trusted=True)
    assert out["X-Forwarded-For"] == "127.0.0.1"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "h"
    assert out["Forwarded"] == "for=127.0.0.1;proto=https;host=h"


def test_request_without_host_has_no_forwarded_host() -> None:
    out = hh.request_headers(hdrs(), peer=None, scheme="http", trusted=False)
    assert "X-Forwarded-Host" not in out
    assert out["X-Forwarded-For"] == "unknown"
    assert out["Forwarded"] == "for=unknown;proto=http"


def test_request_hop_by_hop_upgrade_and_connection_named() -> None:
    incoming = hdrs(
        ("Connection", "Upgrade, X-Secret"),
        ("Upgrade", "websocket"),
        ("X-Secret", "s"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Transfer-Encoding", "chunked"),
        ("X-Kept", "k"),
    )
    out = hh.request_headers(incoming, peer="127.0.0.1", scheme="http", trusted=False)
    for name in ("Connection", "Upgrade", "X-Secret", "Keep-Alive", "TE", "Proxy-Authorization"):
        assert name not in out
    assert "Transfer-Encoding" not in out
    assert out["X-Kept"] == "k"


def test_request_drop_and_add_case_insensitive() -> None:
    incoming = hdrs(
        ("payment-signature", "sig"),
        ("X-PAYMENT", "v1"),
        ("x-payer", "0xspoofed"),
        ("X-PAYER", "0xspoofed2"),
        ("Authorization", "Bearer t"),
    )
    out = hh.request_headers(
        incoming,
        peer="127.0.0.1",
        scheme="http",
        trusted=False,
        drop=hh.lower_names(("PAYMENT-SIGNATURE", "X-Payment", "X-Payer")),
        add={"X-Payer": "0xabc"},
    )
    assert "PAYMENT-SIGNATURE" not in out
    assert "X-PAYMENT" not in out
    assert out.getall("X-Payer") == ["0xabc"]
    assert out["Authorization"] == "Bearer t"


def test_add_replaces_even_when_not_dropped() -> None:
    out = hh.request_headers(
        hdrs(("x-payer", "0xspoofed")),
        peer="127.0.0.1",
        scheme="http",
        trusted=False,
        add={"X-Payer": "0xabc"},
    )
    assert out.getall("X-Payer") == ["0xabc"]


@pytest.mark.parametrize(
    ("peer", "proto", "host", "expected"),
    [
        ("192.0.2.1", "http", "example.com", "for=192.0.2.1;proto=http;host=example.com"),
        ("2001:db8::1", "https", None, 'for="[2001:db8::1]";proto=https'),
        ("::1", "http", "[::1]:8402", 'for="[::1]";proto=http;host="[::1]:8402"'),
        (None, "http", 'a"b\\c', 'for=unknown;proto=http;host="a\\"b\\\\c"'),
    ],
)
def test_forwarded_element_quoting(
    peer: str | None, proto: str, host: str | None, expected: str
) -> None:
    assert hh.forwarded_element(peer, proto, host) == expected


@pytest.mark.parametrize(
    ("peer", "networks", "expected"),
    [
        ("127.0.0.1", LOOPBACK, True),
        ("127.9.9.9", LOOPBACK, True),
        ("::1", LOOPBACK, True),
        ("10.0.0.1", LOOPBACK, False),
        ("::2", LOOPBACK, False),
        ("127.0.0.1", (), False),
        (None, LOOPBACK, False),
        ("", LOOPBACK, False),
        ("not-an-ip", LOOPBACK, False),
    ],
)
def test_is_trusted(peer: str | None, networks: hh.Networks, expected: bool) -> None:
    assert hh.is_trusted(peer, networks) is expected


def test_expose_x402_headers_merges_and_dedups() -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        [
            ("Access-Control-Expose-Headers", "ETag, payment-response"),
            ("access-control-expose-headers", "X-Request-Id"),
            ("Content-Type", "text/plain"),
        ]
    )
    hh.expose_x402_headers(headers)
    assert headers.getall("Access-Control-Expose-Headers") == [
        "ETag, payment-response, X-Request-Id, PAYMENT-REQUIRED, X-PAYMENT-RESPONSE"
    ]
    assert headers["Content-Type"] == "text/plain"


def test_expose_x402_headers_when_absent() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    hh.expose_x402_headers(headers)
    assert headers["Access-Control-Expose-Headers"] == (
        "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE"
    )


# --- issue 12 items 3, 6, 7 ---------------------------------------------------------------


def test_request_drops_underscore_spellings_of_payer_payment_hop_by_hop_and_forwarding() -> None:
    """CGI-style origins read `X_Payer` as `X-Payer`: every spelling that folds (`_` as `-`,
    any case) into a dropped name is dropped too."""
    incoming = hdrs(
        ("X_Payer", "0xforged"),
        ("x_PAYER", "0xforged"),
        ("Payment_Signature", "e30="),
        ("X_Payment", "e30="),
        ("Transfer_Encoding", "chunked"),
        ("Proxy_Connection", "keep-alive"),
        ("Keep_Alive", "timeout=600"),
        ("Proxy_Authorization", "Basic dTpw"),
        ("X_Forwarded_For", "10.9.9.9"),
        ("Connection", "X_Secret"),
        ("X-Secret", "s"),
        ("X_Kept_Header", "k"),
    )
    out = hh.request_headers(
        incoming,
        peer="127.0.0.1",
        scheme="http",
        trusted=False,
        drop=hh.lower_names(("PAYMENT-SIGNATURE", "X-PAYMENT", "X-Payer")),
    )
    assert [n for n in out if n not in ("X-Forwarded-For", "X-Forwarded-Proto", "Forwarded")] == [
        "X_Kept_Header"
    ]
    assert out["X-Forwarded-For"] == "127.0.0.1"


@pytest.mark.parametrize(
    "name",
    [
        "X-Original-URL",
        "x-rewrite-url",
        "X_Original_URL",
        "X-Override-URL",
        "X-Original-URI",
        "X-Forwarded-Path",
        "X-Forwarded-Prefix",
        "X-Forwarded-Uri",
    ],
)
def test_request_drops_path_override_headers(name: str) -> None:
    out = hh.request_headers(hdrs((name, "/paid/x")), peer=None, scheme="http", trusted=True)
    assert name not in out


def test_strip_cdn_directives_keeps_everything_else() -> None:
    headers = CIMultiDict(
        [
            ("Cache-Control", "public"),
            ("Surrogate-Control", "max-age=1"),
            ("cdn-cache-control", "max-age=1"),
            ("Cloudflare-CDN-Cache-Control", "max-age=1"),
            ("Vercel-CDN-Cache-Control", "max-age=1"),
            ("Netlify-CDN-Cache-Control", "max-age=1"),
            ("Edge-Control", "cache-maxage=1s"),
            ("X-Accel-Expires", "1"),
            ("Surrogate_Control", "max-age=1"),  # a CGI-style spelling folds to the same
            ("Fastly_CDN_Cache_Control", "max-age=1"),
            ("Surrogate-Key", "a b"),
            ("ETag", '"x"'),
        ]
    )
    hh.strip_cdn_directives(headers)
    assert list(headers) == ["Cache-Control", "Surrogate-Key", "ETag"]


@pytest.mark.parametrize(
    "name",
    [
        *sorted(hh.CDN_DIRECTIVES),
        "SURROGATE_CONTROL",
        "Akamai-CDN-Cache-Control",
        "x_cdn_cache_control",
    ],
)
def test_a_single_cdn_directive_among_others_is_found(name: str) -> None:
    # The one-pass look over all the names must find each directive wherever it sits.
    for at in range(3):
        names = ["Content-Type", "Cache-Control", "X-Surrogate-Controls"]
        names.insert(at, name)
        headers = CIMultiDict([(n, "1") for n in names])
        hh.strip_cdn_directives(headers)
        assert list(headers) == ["Content-Type", "Cache-Control", "X-Surrogate-Controls"]


def test_names_close_to_a_cdn_directive_are_kept() -> None:
    names = ["Surrogate-Controls", "X-Edge-Control", "Cdn-Cache-Control-X", "cdn-cache-controls"]
    headers = CIMultiDict([(n, "1") for n in names])
    hh.strip_cdn_directives(headers)
    assert list(headers) == names


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([], "Origin"),
        (["Accept-Encoding"], "Accept-Encoding, Origin"),
        (["accept-encoding, origin"], "accept-encoding, origin"),
        (["*"], "*"),
    ],
)
def test_add_vary_merges_once(before: list[str], after: str) -> None:
    headers = CIMultiDict([("Vary", v) for v in before])
    hh.add_vary(headers, "Origin")
    assert headers.getall("Vary") == [after]


def test_request_drops_client_spellings_of_what_the_gateway_adds() -> None:
    out = hh.request_headers(
        hdrs(("X_Request_Id", "forged"), ("x_request_id", "forged"), ("X_Other", "kept")),
        peer="127.0.0.1",
        scheme="http",
        trusted=False,
        add={"X-Request-Id": "real"},
    )
    assert out.getall("X-Request-Id") == ["real"]
    assert "X_Request_Id" not in out and out["X_Other"] == "kept"


# Header names around the directives: a directive, or a near miss (a prefix, a suffix, a
# neighbour), in any case, with `_` for any `-`, and some letters as the non-ASCII ones
# whose case folds to them (or nearly: U+017F is an `s` to a Unicode regex, not to lower()).
_CORES = [*sorted(hh.CDN_DIRECTIVES), "cache-control", "surrogate-key", "cdn-cache", "edge"]
_LOOKALIKES = {"i": "\u0130", "k": "\u212a", "s": "\u017f", "x": "\uff58"}


def _spelled(chars: str, rnd: Any) -> str:
    out = []
    for c in chars:
        if c == "-":
            out.append(rnd.choice("-_"))
        elif c in _LOOKALIKES and rnd.random() < 0.15:
            out.append(_LOOKALIKES[c])
        else:
            out.append(c.upper() if rnd.random() < 0.5 else c)
    return "".join(out)


_NAMES = st.tuples(
    st.sampled_from(["", "", "Fastly-", "acme_", "x", "-", "ki"]),
    st.sampled_from(_CORES),
    st.sampled_from(["", "", "", "s", "-x", "_"]),
    st.randoms(use_true_random=False),
).map(lambda parts: _spelled(parts[0] + parts[1] + parts[2], parts[3]))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_NAMES, st.sampled_from(["ETag", "Vary"])), max_size=4))
def test_strip_cdn_directives_strips_exactly_the_directives(names: list[str]) -> None:
    """The one search that rules a paid answer out strips what the rule says, no more: a
    name is a directive when its folded form (case, `_` as `-`) is one, or ends with
    `-cdn-cache-control`; everything else stays, in order, duplicates included."""
    headers = CIMultiDict([(name, str(i)) for i, name in enumerate(names)])
    hh.strip_cdn_directives(headers)

    def directive(name: str) -> bool:
        folded = hh.fold(name)
        return folded in hh.CDN_DIRECTIVES or folded.endswith("-cdn-cache-control")

    kept = [(name, str(i)) for i, name in enumerate(names) if not directive(name)]
    assert list(headers.items()) == kept
