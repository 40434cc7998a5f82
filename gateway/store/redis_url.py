"""Which Redis a `store:` URL names, parsed without touching the network.

redis-py's `from_url` reads `redis://`, `rediss://` and `unix://` for one server. It has no
URL for Sentinel or Cluster, so those two are parsed here:

- `redis+sentinel://[user:pass@]host1[:26379],host2[:26379]/service_name[/db][?options]`
  asks the Sentinels for the master of `service_name` (also accepted as `?service_name=`).
  The URL's user and password log in to the master; `sentinel_username` and
  `sentinel_password` options log in to the Sentinels, when they need it. `ssl=true`
  speaks TLS to the master.
- `redis://host1[:6379],host2[:6379][/0]?cluster=true` (or `rediss://` for TLS) is a Redis
  Cluster, found from any of the listed nodes. A cluster has only db 0.

Every other URL is handed to redis-py's `from_url` unchanged, so its own options work.
Nothing here ever puts a password in an error message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

SENTINEL_PORT = 26379
REDIS_PORT = 6379
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_SENTINEL_OPTIONS = {"service_name", "db", "ssl", "sentinel_username", "sentinel_password"}
_CLUSTER_OPTIONS = {"cluster", "ssl"}

Kind = Literal["single", "sentinel", "cluster"]


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: Kind
    url: str = field(repr=False)  # the URL as given: may hold a password
    nodes: tuple[tuple[str, int], ...] = ()  # Sentinels, or Cluster start-up nodes
    service_name: str = ""
    db: int = 0
    ssl: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    """Raise ValueError (naming the part, never the password) when the URL is not usable."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError("a Redis store URL needs a scheme (redis://, rediss://, ...)")
    scheme = scheme.lower()
    if scheme == "redis+sentinel":
        return _sentinel(url)
    if scheme in ("redis", "rediss"):
        options = _options(url)
        if _flag(options.get("cluster", "false"), "cluster"):
            return _cluster(url, scheme == "rediss", options)
        if "," in urlsplit(url).netloc:
            raise ValueError("several hosts are only for Sentinel or ?cluster=true URLs")
        return RedisTarget("single", url)
    if scheme == "unix":
        return RedisTarget("single", url)
    raise ValueError(
        f"{scheme}:// is not a Redis URL; use redis://, rediss://, unix:// or redis+sentinel://"
    )


def _sentinel(url: str) -> RedisTarget:
    parts = urlsplit(url)
    options = _options(url)
    _only(options, _SENTINEL_OPTIONS, "redis+sentinel://")
    username, password, hosts = _netloc(parts.netloc)
    path = [unquote(p) for p in parts.path.split("/") if p]
    if len(path) > 2:
        raise ValueError("a Sentinel URL's path is /service_name[/db]")
    service = options.get("service_name") or (path[0] if path else "")
    if not service:
        raise ValueError("a Sentinel URL needs the master's name: redis+sentinel://host/NAME")
    db_text = options.get("db") or (path[1] if len(path) == 2 else "0")
    return RedisTarget(
        "sentinel",
        url,
        nodes=_hosts(hosts, SENTINEL_PORT),
        service_name=service,
        db=_db(db_text),
        ssl=_flag(options.get("ssl", "false"), "ssl"),
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
    )


def _cluster(url: str, tls: bool, options: dict[str, str]) -> RedisTarget:
    parts = urlsplit(url)
    _only(options, _CLUSTER_OPTIONS, "a ?cluster=true URL")
    username, password, hosts = _netloc(parts.netloc)
    db = parts.path.strip("/")
    if db not in ("", "0"):
        raise ValueError("a Redis Cluster has only db 0")
    return RedisTarget(
        "cluster",
        url,
        nodes=_hosts(hosts, REDIS_PORT),
        ssl=tls or _flag(options.get("ssl", "false"), "ssl"),
        username=username,
        password=password,
    )


def _options(url: str) -> dict[str, str]:
    return {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}


def _only(options: dict[str, str], allowed: set[str], what: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"{what} does not take option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(allowed))}"
        )


def _netloc(netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None), hosts


def _hosts(text: str, default_port: int) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in text.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, close, rest = item[1:].partition("]")
            if not close or (rest and not rest.startswith(":")):
                raise ValueError(f"bad host {item!r} in the store URL")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError("the store URL names an empty host")
        nodes.append((unquote(host), _port(port_text, default_port)))
    return tuple(nodes)


def _port(text: str, default: int) -> int:
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r} in the store URL")
    return int(text)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad db {text!r} in the store URL")
    return int(text)


def _flag(text: str, name: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"{name}={text!r} in the store URL is not true or false")
