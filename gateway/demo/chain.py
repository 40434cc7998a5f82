"""A local chain for the demo and the end-to-end tests: anvil, the test USDC, helpers.

Everything here is blocking (web3's sync HTTP provider, subprocesses): call it from
plain code, or off the event loop (`asyncio.to_thread`) from async code. None of it is
used on the gateway's request path.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
ANVIL_RELATIVE = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")

BASE_SEPOLIA_CHAIN_ID = 84532
# Where public chains keep Multicall3; the SDK's facilitator calls it there by name.
MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"

# anvil's default accounts (mnemonic "test test ... junk"): they hold test ETH on a local
# chain and nothing anywhere else. Never use them on a public network.
ANVIL_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)

# 4-byte selectors of both transferWithAuthorization overloads (bytes / v,r,s signature).
TRANSFER_WITH_AUTHORIZATION_SELECTORS = frozenset(
    {
        Web3.keccak(
            text="transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
        )[:4].hex(),
        Web3.keccak(
            text="transferWithAuthorization("
            "address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
        )[:4].hex(),
    }
)

_RPC_TIMEOUT = 10.0
_RECEIPT_TIMEOUT = 30.0


class ChainError(RuntimeError):
    """The local chain could not be started or a transaction on it failed."""


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """A compiled contract shipped in gateway/demo/contracts (abi, bytecode, compiler)."""
    with (CONTRACTS_DIR / f"{name}.json").open(encoding="utf-8") as f:
        artifact: dict[str, Any] = json.load(f)
    return artifact


def anvil_path() -> str:
    """The anvil binary: $ANVIL, or the npm package under the repo's node_modules."""
    configured = os.environ.get("ANVIL")
    candidate = Path(configured) if configured else REPO_ROOT / ANVIL_RELATIVE
    if not candidate.is_file() or not os.access(candidate, os.X_OK):
        raise ChainError(f"anvil not found at {candidate}: run make setup (npm install)")
    return str(candidate)


def free_port() -> int:
    """A loopback port nobody listens on right now (anvil cannot bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def rpc_call(rpc_url: str, method: str, params: list[Any] | None = None) -> Any:
    """One raw JSON-RPC call (no web3 needed: used to wait for a node to come up)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(  # noqa: S310 - loopback URL we built ourselves
        rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=_RPC_TIMEOUT) as response:  # noqa: S310
        answer: dict[str, Any] = json.load(response)
    if "error" in answer:
        raise ChainError(f"{method}: {answer['error']}")
    return answer["result"]


@dataclass
class Anvil:
    """A running anvil process. Stop it with `.stop()` or use it as a context manager."""

    process: subprocess.Popen[bytes]
    rpc_url: str
    port: int
    chain_id: int
    _stderr: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Terminate this anvil (by its own pid), then kill it if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._stderr.close()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_anvil(
    port: int | None = None,
    chain_id: int = BASE_SEPOLIA_CHAIN_ID,
    block_time: float | None = None,
    startup_timeout: float = 15.0,
) -> Anvil:
    """Start anvil on 127.0.0.1 and return once it answers `eth_chainId`.

    Without `port`, a free one is picked (and picked again if another process takes it
    between the probe and anvil's bind).
    """
    binary = anvil_path()
    if port is not None and not port_is_free(port):
        raise ChainError(f"anvil cannot listen on 127.0.0.1:{port}: the port is taken")
    attempts = 1 if port is not None else 3
    last_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        argv = [binary, "--host", "127.0.0.1", "--port", str(chosen)]
        argv += ["--chain-id", str(chain_id), "--silent"]
        if block_time is not None:
            argv += ["--block-time", str(block_time)]
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the Anvil object
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
        anvil = Anvil(process, f"http://127.0.0.1:{chosen}", chosen, chain_id, stderr)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answered = int(rpc_call(anvil.rpc_url, "eth_chainId"), 16) == chain_id
                # Alive after answering: the answer was ours, not another node's on a port
                # taken between the probe and our bind.
                if answered and process.poll() is None:
                    return anvil
            except (OSError, urllib.error.URLError, ValueError, ChainError):
                time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        last_error = _read_all(stderr) or f"no answer on {anvil.rpc_url} in {startup_timeout}s"
        anvil.stop()
    raise ChainError(f"anvil did not start: {last_error}")


def _read_all(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace").strip()


def web3_for(rpc_url: str) -> Any:
    """A sync web3 client (typed `Any`: web3's own annotations are loose)."""
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": _RPC_TIMEOUT}))


def _token(w3: Any, token: str) -> Any:
    return w3.eth.contract(
        address=Web3.to_checksum_address(token), abi=load_artifact("TestUSDC")["abi"]
    )


# Transactions from one key must take nonces one at a time, even from several threads.
_SEND_LOCK = threading.Lock()


def _send(w3: Any, key: str, tx: dict[str, Any]) -> Any:
    """Sign `tx` with `key`, broadcast it, wait for the receipt; raise if it reverted."""
    account = Account.from_key(key)
    with _SEND_LOCK:
        tx = {**tx, "from": account.address, "chainId": w3.eth.chain_id}
        tx["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
        if "gas" not in tx:
            tx["gas"] = w3.eth.estimate_gas(tx)
        if "gasPrice" not in tx and "maxFeePerGas" not in tx:
            tx["gasPrice"] = w3.eth.gas_price
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=_RECEIPT_TIMEOUT)
    if receipt["status"] != 1:
        raise ChainError(f"transaction 0x{bytes(tx_hash).hex()} reverted")
    return receipt


def send_transaction(w3: Any, key: str, tx: dict[str, Any]) -> Any:
    """Sign `tx` with `key` (nonce, gas and chain filled in), broadcast it and return its
    receipt; ChainError if it reverted."""
    return _send(w3, key, tx)


def install_multicall3(rpc_url: str) -> None:
    """Put Multicall3's `tryAggregate` at its canonical address (anvil only: `anvil_setCode`).

    The SDK's facilitator uses it to name the reason a transfer simulation failed
    (nonce used, balance too low...), as it does on Base.
    """
    rpc_call(
        rpc_url,
        "anvil_setCode",
        [MULTICALL3_ADDRESS, load_artifact("Multicall3")["deployedBytecode"]],
    )


def deploy_token(rpc_url: str, deployer_key: str) -> str:
    """Deploy TestUSDC (the deployer becomes its owner, the only minter); its address."""
    w3 = web3_for(rpc_url)
    artifact = load_artifact("TestUSDC")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = _send(w3, deployer_key, factory.constructor().build_transaction({"gas": 3_000_000}))
    address: str = Web3.to_checksum_address(receipt["contractAddress"])
    return address


def mint(rpc_url: str, token: str, owner_key: str, to: str, amount: int) -> str:
    """Mint `amount` atomic units of test USDC to `to`; the transaction hash."""
    w3 = web3_for(rpc_url)
    call = _token(w3, token).functions.mint(Web3.to_checksum_address(to), amount)
    receipt = _send(w3, owner_key, call.build_transaction({"gas": 200_000}))
    return "0x" + bytes(receipt["transactionHash"]).hex()


def balance_of(rpc_url: str, token: str, address: str) -> int:
    balance: int = (
        _token(web3_for(rpc_url), token)
        .functions.balanceOf(Web3.to_checksum_address(address))
        .call()
    )
    return balance


def eth_balance(rpc_url: str, address: str) -> int:
    balance: int = web3_for(rpc_url).eth.get_balance(Web3.to_checksum_address(address))
    return balance


def fund_eth(rpc_url: str, from_key: str, to: str, wei: int) -> None:
    """Send test ETH (only accounts that broadcast transactions need gas: not EIP-3009 payers)."""
    w3 = web3_for(rpc_url)
    _send(w3, from_key, {"to": Web3.to_checksum_address(to), "value": wei, "gas": 21_000})


def new_account() -> LocalAccount:
    """A fresh random account (so no two tests ever share a payer or its nonces)."""
    account: LocalAccount = Account.from_key("0x" + secrets.token_hex(32))
    return account


def new_funded_payer(rpc_url: str, token: str, owner_key: str, amount: int) -> LocalAccount:
    """A fresh account holding `amount` atomic units of test USDC and no ETH."""
    account = new_account()
    if amount:
        mint(rpc_url, token, owner_key, account.address, amount)
    return account


def tx_count(rpc_url: str, address: str) -> int:
    """Transactions `address` has had mined (its nonce): what a facilitator signer broadcast."""
    count: int = web3_for(rpc_url).eth.get_transaction_count(
        Web3.to_checksum_address(address), "latest"
    )
    return count


def _nonce_bytes(nonce: bytes | str) -> bytes:
    raw = bytes.fromhex(nonce.removeprefix("0x")) if isinstance(nonce, str) else nonce
    if len(raw) != 32:
        raise ValueError(f"an EIP-3009 nonce is 32 bytes, got {len(raw)}")
    return raw


def authorization_state(rpc_url: str, token: str, payer: str, nonce: bytes | str) -> bool:
    """Whether the token has consumed (or cancelled) this EIP-3009 authorization."""
    state: bool = (
        _token(web3_for(rpc_url), token)
        .functions.authorizationState(Web3.to_checksum_address(payer), _nonce_bytes(nonce))
        .call()
    )
    return state


def count_transfer_with_authorization_txs(
    rpc_url: str,
    token: str,
    *,
    sender: str | None = None,
    from_block: int = 0,
    succeeded: bool | None = None,
) -> int:
    """Mined `transferWithAuthorization` calls to `token` (reverted ones too, unless
    `succeeded` says which), optionally only those `sender` broadcast."""
    w3 = web3_for(rpc_url)
    token_address = Web3.to_checksum_address(token)
    want_sender = Web3.to_checksum_address(sender) if sender else None
    count = 0
    for number in range(from_block, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if tx["to"] != token_address or (want_sender and tx["from"] != want_sender):
                continue
            if bytes(tx["input"][:4]).hex() not in TRANSFER_WITH_AUTHORIZATION_SELECTORS:
                continue
            if succeeded is not None:
                status = w3.eth.get_transaction_receipt(tx["hash"])["status"]
                if (status == 1) != succeeded:
                    continue
            count += 1
    return count


def block_number(rpc_url: str) -> int:
    number: int = web3_for(rpc_url).eth.block_number
    return number


@dataclass(frozen=True)
class LocalChain:
    """A chain ready for payments: the token deployed, the roles' keys named."""

    rpc_url: str
    chain_id: int
    token: str
    owner_key: str  # deployed the token; the only minter
    facilitator_key: str  # the facilitator's settlement signer (needs ETH for gas)
    # TestUSDT (no EIP-3009: pays through Permit2), deployed by the owner after the token;
    # the x402 contracts (Permit2, proxies, batch settlement) sit at the SDK's addresses.
    usdt: str = ""

    @property
    def network(self) -> str:
        """CAIP-2 name of this chain."""
        return f"eip155:{self.chain_id}"

    @property
    def facilitator_address(self) -> str:
        address: str = Account.from_key(self.facilitator_key).address
        return address

    def new_payer(self, amount: int) -> LocalAccount:
        return new_funded_payer(self.rpc_url, self.token, self.owner_key, amount)

    def balance_of(self, address: str) -> int:
        return balance_of(self.rpc_url, self.token, address)

    def new_usdt_payer(self, amount: int, *, eth_wei: int = 0, approve: bool = False) -> Any:
        """A fresh account holding `amount` TestUSDT (see x402_contracts.new_permit2_payer)."""
        from gateway.demo.x402_contracts import new_permit2_payer

        return new_permit2_payer(
            self.rpc_url, self.usdt, self.owner_key, amount, eth_wei=eth_wei, approve=approve
        )

    def usdt_balance_of(self, address: str) -> int:
        return balance_of(self.rpc_url, self.usdt, address)


def prepare_chain(
    rpc_url: str,
    owner_key: str = ANVIL_KEYS[0],
    facilitator_key: str = ANVIL_KEYS[1],
) -> LocalChain:
    """Install Multicall3, deploy the test USDC, then TestUSDT, and place the x402 contracts
    (Permit2, the exact/upto proxies, batch settlement and its collectors) on a fresh anvil."""
    from gateway.demo.x402_contracts import deploy_tether, install_x402_contracts

    chain_id = int(rpc_call(rpc_url, "eth_chainId"), 16)
    install_multicall3(rpc_url)
    token = deploy_token(rpc_url, owner_key)
    usdt = deploy_tether(rpc_url, owner_key)
    install_x402_contracts(rpc_url)
    return LocalChain(rpc_url, chain_id, token, owner_key, facilitator_key, usdt)
