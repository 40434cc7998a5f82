"""nginx as the fast ORIGIN (small JSON + a large sparse body) and as the reference PROXY.

Both run one worker process, like the single-process Python proxies they are compared with,
with access logs off and keep-alive on both sides.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench.procs import Proc, ProcGroup

SMALL_PATH = "/small.json"
BIG_PATH = "/big.bin"
# The same bodies under other names, for the gateway's priced routes (the origin receives
# exactly the path that was priced, so a priced path must exist at the origin).
PAID_SMALL_PATH = "/paid.json"
PAID_BIG_PATH = "/paid-big.bin"
REPORT_PATH = "/report.json"  # section E's route with SIWX access (bench/sessions.py)
CHANNEL_PATH = "/channel.json"  # section E's route with a payment channel (issue 14)
# What a typical JSON API answers: a couple of hundred bytes.
SMALL_BODY = json.dumps(
    {
        "city": "Lisbon",
        "days": [{"day": d, "high_c": 20 + d % 5, "low_c": 12 + d % 3} for d in range(5)],
        "source": "bench-origin",
    }
).encode()

_COMMON = """
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    {body}
}}
"""

_ORIGIN = """
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    types {{ application/json json; application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {root};
        location / {{ try_files $uri =404; }}
    }}
"""

_PROXY = """
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
"""


def _write_conf(prefix: Path, body: str) -> Path:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    # As root, nginx would drop its worker to `nobody`, which cannot read a private temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(_COMMON.format(user=user, prefix=prefix, body=body))
    return conf


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )
    if found is None:
        raise RuntimeError("nginx is not installed (scripts/setup.sh --bench installs it)")
    return found


def _start(group: ProcGroup, name: str, prefix: Path, conf: Path, port: int) -> Proc:
    argv = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
    return group.start(name, argv, port=port)


def start_origin(group: ProcGroup, workdir: Path, port: int, big_bytes: int) -> Proc:
    """The origin: GET /small.json (a small JSON) and GET /big.bin (big_bytes of zeros),
    and the same at /paid.json and /paid-big.bin.

    The big files are sparse (`truncate`), so they take no disk.
    """
    prefix = workdir / "nginx-origin"
    root = prefix / "www"
    root.mkdir(parents=True, exist_ok=True)
    for small in (SMALL_PATH, PAID_SMALL_PATH, REPORT_PATH, CHANNEL_PATH):
        (root / small.lstrip("/")).write_bytes(SMALL_BODY)
    for name in (BIG_PATH, PAID_BIG_PATH):
        with (root / name.lstrip("/")).open("wb") as big:
            big.truncate(big_bytes)
    conf = _write_conf(prefix, _ORIGIN.format(port=port, root=root))
    return _start(group, "nginx-origin", prefix, conf, port)


def start_proxy(group: ProcGroup, workdir: Path, port: int, origin_port: int) -> Proc:
    """nginx as a reverse proxy in front of the origin: the reference a C proxy costs."""
    prefix = workdir / "nginx-proxy"
    conf = _write_conf(prefix, _PROXY.format(port=port, origin_port=origin_port))
    return _start(group, "nginx-proxy", prefix, conf, port)
