"""`cors:`: the CORS policy of the answers the gateway writes itself (issue 12 item 4).

    cors: {origins: ["*"], credentials: false, max_age: 600s}

`origins` is `["*"]` (any page may read the 402 and pay: the default) or a list of page
origins (`https://shop.example`, scheme://host[:port], no path). `credentials: true` lets a
page send cookies, so it is refused with `*` (browsers refuse that pair too; the gateway
would have to echo every origin, which is the same as no policy at all).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml

from gateway import formats
from gateway.config.reader import Reader, Scalar, boolean, using
from gateway.config.settings import Cors

CORS_KEYS = frozenset({"origins", "credentials", "max_age"})


def parse_page_origin(text: str) -> str:
    """`*` or a serialised origin (`https://shop.example[:8443]`), lower-cased as browsers
    send it in `Origin`."""
    text = text.strip()
    if text == "*":
        return text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{formats.quote(text)} is not an origin (scheme://host[:port]) or '*'")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{formats.quote(text)}: an origin has no path, query or user part")
    return f"{parts.scheme}://{parts.netloc}".lower()


def _max_age(scalar: Scalar) -> float:
    return formats.parse_duration(scalar.text, allow_zero=True)


def compile_cors(reader: Reader, node: yaml.Node | None) -> Cors:
    default = Cors()
    section = reader.section(node, "cors", CORS_KEYS) if node is not None else None
    if not section or not section.entries:
        return default
    origins = default.origins
    if (origins_node := section.get("origins")) is not None:
        items = reader.sequence(origins_node, "cors.origins")
        if items is not None:
            read = [
                reader.value(item, f"cors.origins[{index}]", using(parse_page_origin), None)
                for index, item in enumerate(items)
            ]
            origins = tuple(dict.fromkeys(o for o in read if o is not None))
    credentials = section.read("credentials", boolean, default.credentials)
    if credentials and "*" in origins:
        section.error(
            "credentials",
            "true needs explicit origins; '*' with credentials would let every site "
            "read answers sent with its visitors' cookies",
        )
        credentials = False
    max_age = section.read("max_age", _max_age, default.max_age)
    return Cors(origins=origins, credentials=credentials, max_age=max_age)
