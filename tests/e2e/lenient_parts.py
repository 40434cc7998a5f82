"""The lenient origin (tests/e2e/_lenient_origin.py) as a process, and a raw HTTP client that
sends a request exactly as written (no client-side normalisation of the method, the target or
the header names), for the edge tests of issue 12."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Chain
from tests.procs import free_port, stop, wait_port

ORIGIN_SCRIPT = Path(__file__).with_name("_lenient_origin.py")
SECRET = "PAID-CONTENT-5f0c2e"  # _lenient_origin.SECRET: in every paid body it serves
PAID_RESOURCES = frozenset({"paid", "paid-archive"})
MARKER = "X-Lenient-Resource"  # which resource the origin served
# What a client must never get to the origin, after CGI-style folding of the name.
PAYMENT_HEADERS = frozenset({"payment-signature", "x-payment"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def fold(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class LenientOrigin:
    """_lenient_origin.py in its own process; `calls` are the JSON lines it printed, one per
    request it answered (what it believed: resource, resolved path, payers, header names)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LenientOrigin:
        self.proc = subprocess.Popen(
            [sys.executable, str(ORIGIN_SCRIPT), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 20, self.proc)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self._calls.append(json.loads(line))

    def calls(self, probe: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [c for c in self._calls if probe is None or c["probe"] == probe]

    def wait_calls(self, probe: str, count: int = 1, timeout: float = 5) -> list[dict[str, Any]]:
        """The origin's lines for `probe`, once `count` are in (a thread reads its stdout)."""
        deadline = time.monotonic() + timeout
        while len(found := self.calls(probe)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return found

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}

    @property
    def served(self) -> str | None:
        """The resource the lenient origin said it served, if its answer got through."""
        return self.header(MARKER)

    @property
    def paid_content(self) -> bool:
        """Did any of the origin's paid content reach the client (its body or its marker)?"""
        return SECRET.encode() in self.body or self.served in PAID_RESOURCES


def request_bytes(
    method: str,
    target: str,
    lines: Iterable[str] = (),
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    host: str = "127.0.0.1",
) -> bytes:
    head = [f"{method} {target} {version}", f"Host: {host}", *lines, "Connection: close"]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def exchange(port: int, raw: bytes, timeout: float = 10) -> Reply:
    """Send `raw` on a new connection and read the answer to the end (the request says
    `Connection: close`). A connection closed without an answer is status 0."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(raw)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return parse_reply(data, head_only=raw.split(b" ", 1)[0].upper() == b"HEAD")


def parse_reply(data: bytes, head_only: bool = False) -> Reply:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return Reply(0, [], data)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    reply = Reply(status, headers, b"")
    if head_only or status in (204, 304):
        return reply
    if "chunked" in (reply.header("Transfer-Encoding") or "").lower():
        rest = dechunk(rest)
    return Reply(status, headers, rest)


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def smuggled_headers(call: dict[str, Any]) -> list[str]:
    """Header names the origin got that fold (`_` as `-`, any case) into a payment or
    hop-by-hop header: a CGI-style origin reads them as the real thing."""
    return [
        name
        for name in call["header_names"]
        if fold(name) in PAYMENT_HEADERS or (fold(name) in HOP_BY_HOP and "_" in name)
    ]


def edge_config(chain: Chain, upstream: str, pay_to: str, facilitator_url: str) -> dict[str, Any]:
    """Only what a deployment must say; every other setting is the shipped default."""
    return {
        "upstream": upstream,
        "facilitator": {"url": facilitator_url},
        "network": chain.network,
        "pay_to": pay_to,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "routes": [
            {"path": "/free/*", "price": "free"},
            {
                "path": "/paid/*",
                "methods": ["GET", "POST"],
                "price": "$0.001",
                "description": "Paid reports",
            },
            {"path": "/paid-archive/*", "price": "$0.001", "description": "The archive"},
        ],
    }
