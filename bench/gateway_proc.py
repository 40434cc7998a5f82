"""The gateway under test: its config written to a temp file, `x402-gateway serve` started."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Proc, ProcGroup, free_port

# A well-formed recipient for free-route configs (anvil's 10th default account).
PLACEHOLDER_PAY_TO = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"


def gateway_argv(config: Path) -> list[str]:
    """The console script next to this interpreter, or the module when it is not installed."""
    script = Path(sys.executable).parent / "x402-gateway"
    if script.exists():
        return [str(script), "serve", "--config", str(config)]
    found = shutil.which("x402-gateway")
    if found:
        return [found, "serve", "--config", str(config)]
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]


def gateway_available() -> str | None:
    """None when the gateway can be started, else why not."""
    try:
        importlib.import_module("gateway.cli")
    except Exception as exc:  # any import failure means: not there yet
        return f"gateway.cli does not import: {type(exc).__name__}: {exc}"
    return None


def free_config(upstream: str, log_level: str) -> dict[str, Any]:
    """One free `/*` route in front of upstream. No priced route, so the facilitator (an
    address nothing listens on) is never called."""
    return {
        "upstream": upstream,
        "facilitator": {"url": f"http://127.0.0.1:{free_port()}"},
        "network": "eip155:84532",
        "pay_to": PLACEHOLDER_PAY_TO,
        "store": "memory",
        "log_level": log_level,
        "routes": [{"path": "/*", "price": "free"}],
    }


def start_gateway(
    group: ProcGroup, workdir: Path, name: str, config: dict[str, Any]
) -> tuple[Proc, int]:
    """Write config (listen/admin filled in with free ports) and start the gateway on it."""
    port, admin = free_port(), free_port()
    if "listen" in config:  # a config that must know its own address (public_url)
        port = int(str(config["listen"]).rsplit(":", 1)[1])
    full = {"listen": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{admin}", **config}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    proc = group.start(name, gateway_argv(path), port=port, timeout=60.0)
    return proc, port
