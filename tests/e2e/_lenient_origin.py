"""A deliberately lenient origin: the realistic threat model for path, method and header tricks.

    python tests/e2e/_lenient_origin.py PORT

It serves its resources the way the origins people really run do, all at once (issue 12):

- any method, known or made up, lower case too (Express's `app.all`, a legacy PHP script, a
  Go `HandleFunc`): OPTIONS and HEAD get the paid content like GET, preflight or not;
- any case of the path (IIS, Windows and macOS file systems, case-insensitive routers);
- IIS and Windows rules: trailing dots and spaces in a segment are ignored (`/paid./x`,
  `/paid%20/x`, `/paid%2e/x` are `/paid/x`), `\\` is `/`, an NTFS stream suffix is ignored
  (`/paid::$INDEX_ALLOCATION/x`), an 8.3 short name reaches its long one
  (`/PAID-A~1/x` is `/paid-archive/x`), `%u0070` is `p`, and full-width letters are read as
  ASCII (`/%EF%BD%90aid/x` is `/paid/x`);
- the `X-Original-URL`, `X-Rewrite-URL`, `X-Override-URL` and `X-Forwarded-Path` request
  headers replace the request path (IIS URL Rewrite, Symfony and Zend before their fixes);
- Tomcat-style path parameters are dropped (`/PAID;jsessionid=1/x` is `/paid/x`), before
  decoding, as Tomcat does (so `%3B` is not a delimiter);
- CGI-style header names: `_` and `-` are one (`X_Payer` is read as `X-Payer`), case ignored;
- the request target may be absolute-form (`GET http://host/paid/x`), and the parser takes
  what it can (a raw space in the target, `Name : value`).

Resources, by their first path segment after all of the above:
  paid, paid-archive  the paid content: JSON with SECRET, `X-Lenient-Resource: paid|paid-archive`,
                      and CDN cache directives (`Cache-Control: public, max-age=3600`,
                      `Surrogate-Control`, `CDN-Cache-Control`, vendor `*-CDN-Cache-Control`,
                      Akamai's `Edge-Control`) that a CDN in front of the gateway would obey
  free                free content, `X-Lenient-Resource: free`
  anything else       404, `X-Lenient-Resource: none`
Every JSON body says what the origin believed: the resource, the path it resolved, the method,
the payer (every value of a header that folds to `x-payer`; `payer` is the last, as PHP's
`$_SERVER` keeps it), the names of payment and hop-by-hop headers it saw after folding, and
the client's `X-Probe-Id`. `?sse=N` streams the resource as N server-sent events instead
(`&every=S` seconds apart). A request with an `Origin` header gets permissive CORS headers
back (the origin's own CORS setup: it reflects the origin and every requested header).

One JSON line per request on stdout (the same facts plus the raw header names), so a test
can see exactly what reached the origin.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import unicodedata
from typing import Any
from urllib.parse import unquote, urlsplit

SECRET = "PAID-CONTENT-5f0c2e"
PAID = frozenset({"paid", "paid-archive"})
KNOWN = ("paid", "paid-archive", "free")
OVERRIDE_HEADERS = ("x-original-url", "x-rewrite-url", "x-override-url", "x-forwarded-path")
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
CDN_DIRECTIVES = {
    "Cache-Control": "public, max-age=3600",
    "Surrogate-Control": "max-age=3600",
    "CDN-Cache-Control": "max-age=3600",
    "Cloudflare-CDN-Cache-Control": "max-age=3600",
    "Vercel-CDN-Cache-Control": "max-age=3600",
    "Edge-Control": "cache-maxage=3600s",
}
MAX_HEAD = 64 * 1024
_SHORT_NAME = re.compile(r"([^~]{1,6})~[1-9]")


def fold(name: str) -> str:
    """A header name as a CGI-style server reads it: case and `_`/`-` ignored."""
    return name.strip().lower().replace("_", "-")


def short_name(name: str) -> str:
    """The 8.3 name Windows gives a long file name (the first of its kind: `~1`)."""
    base = re.sub(r"[^A-Za-z0-9\-]", "", name).upper()
    if len(name) <= 8 and base == name.upper():
        return base
    return base[:6] + "~1"


def resolve(target: str) -> str:
    """The path this origin serves for a request target, after every lenient rule."""
    if target.lower().startswith(("http://", "https://")):
        target = urlsplit(target).path or "/"
    target = target.split("#", 1)[0].split("?", 1)[0]
    target = re.sub(r";[^/]*", "", target)  # Tomcat: path parameters go before decoding
    target = re.sub(r"%u([0-9A-Fa-f]{4})", lambda m: chr(int(m[1], 16)), target)  # IIS %u
    path = unquote(target, errors="replace").replace("\\", "/")
    path = unicodedata.normalize("NFKC", path)  # IIS "best fit": full-width letters to ASCII
    kept: list[str] = []
    for raw_segment in path.split("/"):
        named = raw_segment.split(":", 1)[0]  # an NTFS stream (`::$DATA`, `:$i30:$INDEX_...`)
        if named == "..":
            if kept:
                kept.pop()
            continue
        segment = named.rstrip(". ")  # Windows ignores trailing dots and spaces
        if not segment:
            continue
        lowered = segment.lower()
        if _SHORT_NAME.fullmatch(segment):
            lowered = next((k for k in KNOWN if short_name(k) == segment.upper()), lowered)
        kept.append(lowered)
    return "/" + "/".join(kept)


def resource_of(path: str) -> str:
    first = path.split("/")[1] if path.count("/") >= 1 else ""
    return first if first in KNOWN else "none"


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    words = lines[0].split(" ")
    method, version = words[0], words[-1] if len(words) > 2 else "HTTP/1.0"
    target = " ".join(words[1:-1]) if len(words) > 2 else (words[1] if len(words) > 1 else "/")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and headers:  # obs-fold: a continuation of the previous line
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return method, target, version, headers


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    framing = {name.strip().lower(): value for name, value in headers}
    if "chunked" in framing.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()).strip():  # trailers
                    pass
                return body
            body += await reader.readexactly(size)
            await reader.readline()
    length = framing.get("content-length", "").strip()
    return await reader.readexactly(int(length)) if length.isdigit() else b""


def believed(
    method: str, target: str, headers: list[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    folded: dict[str, list[str]] = {}
    for name, value in headers:
        folded.setdefault(fold(name), []).append(value)
    effective = target
    for name in OVERRIDE_HEADERS:
        if folded.get(name):
            effective = folded[name][0]
            break
    path = resolve(effective)
    payers = folded.get("x-payer", [])
    facts: dict[str, Any] = {
        "resource": resource_of(path),
        "method": method,
        "target": target,
        "resolved": path,
        "payer": payers[-1] if payers else None,
        "payers": payers,
        "payment_headers": sorted(n for n in folded if n in PAYMENT_HEADERS),
        "hop_by_hop": sorted(n for n in folded if n in HOP_BY_HOP),
        "probe": next(iter(folded.get("x-probe-id", [])), None),
    }
    return facts, folded


def cors_headers(folded: dict[str, list[str]]) -> dict[str, str]:
    origin = next(iter(folded.get("origin", [])), None)
    if origin is None:
        return {}
    requested = (folded.get("access-control-request-headers") or ["*"])[0]
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
        "Access-Control-Allow-Headers": requested,
        "Access-Control-Expose-Headers": "X-Lenient-Resource",
        "Access-Control-Max-Age": "5",
        "Vary": "Origin",
    }


def head_bytes(status: int, headers: dict[str, str]) -> bytes:
    reason = {200: "OK", 404: "Not Found"}[status]
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def answer(
    writer: asyncio.StreamWriter,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    keep_alive: bool,
) -> None:
    facts, folded = believed(method, target, headers)
    resource = facts["resource"]
    print(json.dumps({**facts, "header_names": [n for n, _ in headers]}), flush=True)
    status = 404 if resource == "none" else 200
    body_facts = {**facts, **({"secret": SECRET} if resource in PAID else {})}
    out = {"X-Lenient-Resource": resource, **cors_headers(folded)}
    if resource in PAID:
        out.update(CDN_DIRECTIVES)
    out["Connection"] = "keep-alive" if keep_alive else "close"
    query = dict(re.findall(r"[?&](\w+)=([^&#]*)", target))
    if "sse" in query and status == 200 and method.upper() != "HEAD":
        await stream_events(writer, out, body_facts, int(query["sse"]), query.get("every"))
        return
    body = json.dumps(body_facts).encode()
    out.update({"Content-Type": "application/json", "Content-Length": str(len(body))})
    writer.write(head_bytes(status, out) + (b"" if method.upper() == "HEAD" else body))
    await writer.drain()


async def stream_events(
    writer: asyncio.StreamWriter,
    out: dict[str, str],
    facts: dict[str, Any],
    count: int,
    every: str | None,
) -> None:
    out.update({"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
    out.setdefault("Cache-Control", "no-cache")
    writer.write(head_bytes(200, out))
    for n in range(count):
        event = f"id: {n}\nevent: message\ndata: {json.dumps({**facts, 'n': n})}\n\n".encode()
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        await asyncio.sleep(float(every or "0.05"))
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                return
            except asyncio.IncompleteReadError as exc:
                if b"\n\n" not in exc.partial:
                    return
                head = exc.partial
            method, target, version, headers = parse_head(head)
            await read_body(reader, headers)
            connection = ",".join(v for n, v in headers if n.strip().lower() == "connection")
            keep_alive = "close" not in connection.lower() and (
                version.upper() == "HTTP/1.1" or "keep-alive" in connection.lower()
            )
            await answer(writer, method, target, headers, keep_alive)
            if not keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
        return
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve_connection, "127.0.0.1", port, limit=MAX_HEAD)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
