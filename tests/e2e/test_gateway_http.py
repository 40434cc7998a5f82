"""The gateway process as an HTTP proxy: routing, path tricks, methods a priced route does not
list, CORS preflight, upstream failures, and the paywall page in a real headless browser.

No payment is made here (see test_payments.py); a priced route's challenge is built from config
alone, so the facilitator is a dead address on purpose.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway
from tests.procs import free_port

pytestmark = pytest.mark.e2e
PAY_TO = "0x000000000000000000000000000000000000dEaD"


def base_config(upstream: str) -> dict[str, object]:
    return {
        "upstream": upstream,
        "facilitator": {"url": f"http://127.0.0.1:{free_port()}", "timeout": "1s"},
        "pay_to": PAY_TO,
        "timeouts": {"read": "1s", "connect": "1s"},
        "routes": [
            {
                "path": "/paid/*",
                "methods": ["GET", "POST"],
                "price": "$0.001",
                "description": "A paid report",
            },
            {"path": "/free/*", "price": "free"},
        ],
    }


@pytest.fixture(scope="module")
def gw(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway(base_config(origin.url), tmp_path_factory.mktemp("gw"), ready=False) as g:
        yield g


def raw_request(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send a request target exactly as written (no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


TRICKS = {
    "/paid/../free/x": 200,  # resolves to a free path: the origin gets /free/x, nothing priced
    "/free/../paid/x": 402,
    "/free/%2e%2e/paid/x": 402,
    "/free/%2E%2E/paid/x": 402,
    "//paid/x": 402,
    "/%70aid/x": 402,
    "/paid/./x": 402,
    "/./paid/x": 402,
    "/free/..%2fpaid/x": 400,
    "/paid%2Fx": 400,
    "/paid%5cx": 400,
    "/paid/%00": 400,
    "/paid/%252e": 400,
    "/../paid/x": 400,
    "http://evil.example/paid/x": 400,
    "/paid/x%09": 400,
    "/free/..;/paid/x": 400,
}


@pytest.mark.parametrize("target", sorted(TRICKS))
def test_path_tricks_are_priced_or_refused(target: str, gw: GatewayProcess, origin: Origin) -> None:
    before = len(origin.log.calls)
    status, _ = raw_request(gw.port, target)
    assert status == TRICKS[target], target
    forwarded = origin.log.calls[before:]
    if status == 200:
        # The origin received exactly the canonical, free path.
        assert [c["raw_path"] for c in forwarded] == ["/free/x"]
    else:
        assert forwarded == []


def test_upper_case_path_is_priced_unless_opted_out(
    gw: GatewayProcess, origin: Origin, tmp_path: Path
) -> None:
    """Issue 12 item 2: case-insensitive matching by default (a case-insensitive origin would
    serve /PAID/x as /paid/x); the path goes to the origin as sent. `false` opts out."""
    before = len(origin.log.calls)
    assert raw_request(gw.port, "/PAID/x")[0] == 402
    assert raw_request(gw.port, "/Free/x")[0] == 200
    assert [c["raw_path"] for c in origin.log.calls[before:]] == ["/Free/x"]  # not folded
    cfg = {**base_config(origin.url), "case_insensitive_paths": False}
    with gateway(cfg, tmp_path, ready=False) as cs:
        assert raw_request(cs.port, "/PAID/x")[0] == 200  # a different, unrouted path


def test_every_method_on_a_free_route(gw: GatewayProcess, origin: Origin) -> None:
    with httpx.Client() as http:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"):
            r = http.request(
                method, gw.url + "/free/m", content=b"abc" if method != "GET" else None
            )
            assert r.status_code == 200, method
            assert origin.log.calls[-1]["method"] == method
        head = http.head(gw.url + "/free/m")
        assert head.status_code == 200 and head.content == b""


def test_unlisted_method_on_a_priced_route_is_405_not_free(
    gw: GatewayProcess, origin: Origin
) -> None:
    before = len(origin.log.calls)
    with httpx.Client() as http:
        r = http.delete(gw.url + "/paid/x")
        head = http.head(gw.url + "/paid/x")
    assert r.status_code == 405
    assert r.headers["Content-Type"] == "application/problem+json"
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert head.status_code == 402  # HEAD goes with GET
    assert len(origin.log.calls) == before


def test_cors_preflight_on_a_priced_route_is_answered_by_the_gateway_never_402(
    gw: GatewayProcess, origin: Origin
) -> None:
    """Issue 12 item 1: OPTIONS on a priced path never reaches the origin (a method-agnostic
    one would serve it the paid content): a preflight gets the `cors:` policy's answer, a
    plain OPTIONS `Allow` from the route table. On a free path it is still forwarded."""
    before = len(origin.log.calls)
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "payment-signature, x-custom",
    }
    with httpx.Client() as http:
        r = http.options(gw.url + "/paid/x", headers=preflight)
        plain = http.options(gw.url + "/PAID/x")
        free = http.options(gw.url + "/free/x", headers=preflight)
    assert r.status_code == 204 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert set(r.headers["Access-Control-Allow-Methods"].split(", ")) == {
        "GET",
        "HEAD",
        "POST",
        "OPTIONS",
    }
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"payment-signature", "x-payment", "x-custom"} <= allowed
    assert r.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in r.headers["Vary"]
    assert plain.status_code == 204
    assert set(plain.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    assert free.status_code == 200
    assert [c["method"] for c in origin.log.calls[before:]] == ["OPTIONS"]  # the free one


def test_client_x_payer_is_stripped_on_free_routes(gw: GatewayProcess, origin: Origin) -> None:
    with httpx.Client() as http:
        r = http.get(gw.url + "/free/whoami", headers={"X-Payer": "0xforged"})
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in origin.log.calls[-1]["headers"].items()}
    assert "x-payer" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert re.fullmatch(r"[0-9a-f]{24,}", seen["x-request-id"])


def test_challenge_works_while_facilitator_is_down(gw: GatewayProcess) -> None:
    with httpx.Client() as http:
        r = http.get(gw.url + "/paid/report?x=1")
    assert r.status_code == 402
    assert r.json()["accepts"][0]["resource"].endswith("/paid/report?x=1")


def test_upstream_refused_is_502_problem(tmp_path: Path) -> None:
    with gateway(base_config(f"http://127.0.0.1:{free_port()}"), tmp_path, ready=False) as g:
        r = httpx.get(g.url + "/free/x")
    assert r.status_code == 502
    problem = r.json()
    assert problem["reason"] == "upstream_unreachable" and problem["status"] == 502
    assert r.headers["Content-Type"] == "application/problem+json"


def test_upstream_timeout_is_504_problem(gw: GatewayProcess) -> None:
    r = httpx.get(gw.url + "/free/slow?s=3", timeout=10)
    assert r.status_code == 504
    assert r.json()["reason"] == "upstream_timeout"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_browser_gets_the_paywall_page(gw: GatewayProcess, tmp_path: Path) -> None:
    shot = tmp_path / "paywall.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        ["chromium", *flags, "--virtual-time-budget=3000", "--dump-dom", gw.url + "/paid/report"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    subprocess.run(
        [
            "chromium",
            *flags,
            f"--screenshot={shot}",
            "--window-size=1000,800",
            gw.url + "/paid/report",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert "<html" in dom.lower()
    assert "x402" in dom.lower() or "payment" in dom.lower()
    assert shot.stat().st_size > 1000
