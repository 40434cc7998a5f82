"""The demo's processes: anvil with the test USDC, the demo origin, the gateway.

Every process is started here and stopped here, by its own pid, in reverse order; their
output goes to log files in one temporary directory (the gateway's JSON lines included),
so the walkthrough's own output stays readable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account

from .chain import (
    ANVIL_KEYS,
    REPO_ROOT,
    Anvil,
    LocalChain,
    free_port,
    mint,
    port_is_free,
    prepare_chain,
    start_anvil,
)

CONFIG_ENV = "X402_DEMO_CONFIG"
DEFAULT_CONFIG = REPO_ROOT / "config" / "demo.yaml"
# The roles' anvil accounts: #0 deploys the token, #1 signs settlements, #2 pays, #3 is paid.
OWNER_KEY, SETTLER_KEY, PAYER_KEY, PAYEE_KEY = ANVIL_KEYS[0:4]
DELEGATE_KEY = ANVIL_KEYS[4]  # the engine's SDK delegate (Permit2, upto): a key of its own
PAYER_FUNDS = 10_000_000  # 10 test USDC (6 decimals)
START_TIMEOUT = 30.0


class DemoError(RuntimeError):
    """A demo process did not start or a step could not run; the message says which."""


@dataclass(frozen=True)
class Ports:
    rpc: int
    origin: int
    gateway: int
    admin: int


def choose_port(env_name: str, default: int, taken: set[int]) -> int:
    """$env_name if set; else `default` if nobody listens there; else any free port."""
    configured = os.environ.get(env_name)
    if configured:
        try:
            return int(configured)
        except ValueError:
            raise DemoError(f"{env_name}={configured!r} is not a port number") from None
    port = default
    while port in taken or not port_is_free(port):
        port = free_port()
    taken.add(port)
    return port


def choose_ports() -> Ports:
    taken: set[int] = set()
    return Ports(
        rpc=choose_port("DEMO_RPC_PORT", 8545, taken),
        origin=choose_port("DEMO_ORIGIN_PORT", 8080, taken),
        gateway=choose_port("DEMO_GATEWAY_PORT", 8402, taken),
        admin=choose_port("DEMO_ADMIN_PORT", 9402, taken),
    )


def config_path() -> Path:
    path = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    if not path.is_file():
        raise DemoError(f"demo config not found at {path} (set ${CONFIG_ENV})")
    return path


def _gateway_argv(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("x402-gateway")
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway.cli"]
    return [*head, "serve", "--config", str(config)]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Stack:
    """All the demo's processes; `stop()` is safe to call at any point, and more than once."""

    ports: Ports
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="x402-demo-")))
    anvil: Anvil | None = None
    chain: LocalChain | None = None
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.admin}"

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.origin}"

    @property
    def gateway_log(self) -> Path:
        return self.logs / "gateway.log"

    @property
    def payer(self) -> str:
        address: str = Account.from_key(PAYER_KEY).address
        return address

    @property
    def payee(self) -> str:
        address: str = Account.from_key(PAYEE_KEY).address
        return address

    def start_chain(self) -> LocalChain:
        """anvil (chain id 84532), Multicall3, the test USDC, and 10 USDC for the payer."""
        self.anvil = start_anvil(port=self.ports.rpc)
        self.chain = prepare_chain(self.anvil.rpc_url, OWNER_KEY, SETTLER_KEY)
        mint(self.chain.rpc_url, self.chain.token, OWNER_KEY, self.payer, PAYER_FUNDS)
        mint(self.chain.rpc_url, self.chain.usdt, OWNER_KEY, self.payer, PAYER_FUNDS)
        return self.chain

    def start_origin(self) -> None:
        argv = [sys.executable, "-m", "gateway.demo.origin", "--port", str(self.ports.origin)]
        self._spawn("origin", argv, os.environ.copy())
        self._wait("origin", f"{self.origin_url}/api/status")

    def start_gateway(self, config: Path) -> None:
        if self.chain is None:
            raise DemoError("start the chain before the gateway")
        env = os.environ.copy()
        env.update(
            DEMO_GATEWAY_PORT=str(self.ports.gateway),
            DEMO_ADMIN_PORT=str(self.ports.admin),
            DEMO_ORIGIN_PORT=str(self.ports.origin),
            DEMO_RPC_URL=self.chain.rpc_url,
            DEMO_SETTLER_KEY=SETTLER_KEY,
            DEMO_DELEGATE_KEY=DELEGATE_KEY,
            DEMO_TOKEN=self.chain.token,
            DEMO_USDT=self.chain.usdt,
            DEMO_PAY_TO=self.payee,
        )
        self._spawn("gateway", _gateway_argv(config), env)
        self._wait("gateway", f"{self.admin_url}/healthz")
        self._wait("gateway", f"{self.admin_url}/readyz")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.processes.append((name, process))

    def _wait(self, name: str, url: str) -> None:
        process = dict(self.processes)[name]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DemoError(f"the {name} exited with code {process.returncode}")
            if _http_ok(url):
                return
            time.sleep(0.1)
        raise DemoError(f"the {name} did not answer {url} within {START_TIMEOUT:.0f} s")

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        if not path.is_file():
            return "(no output)"
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    def stop(self) -> None:
        """Stop every process this stack started, newest first, each by its pid."""
        while self.processes:
            _, process = self.processes.pop()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None
