"""The chain helpers' failure paths (a real anvil run is in tests/e2e/test_chain_infra.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from eth_account import Account

from gateway.demo import chain as chainlib


def test_anvil_path_says_how_to_get_anvil(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANVIL", str(tmp_path / "nowhere"))
    with pytest.raises(chainlib.ChainError, match="make setup"):
        chainlib.anvil_path()


def test_a_node_that_dies_at_start_is_reported_with_its_stderr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "anvil"
    fake.write_text("#!/bin/sh\necho 'error: address already in use' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ANVIL", str(fake))
    with pytest.raises(chainlib.ChainError, match="address already in use"):
        chainlib.start_anvil(startup_timeout=5)


def test_a_taken_port_is_refused_before_starting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(chainlib.ChainError, match="taken"):
            chainlib.start_anvil(port=taken.getsockname()[1])


def test_anvil_keys_are_the_ten_default_accounts() -> None:
    addresses = [Account.from_key(k).address for k in chainlib.ANVIL_KEYS]
    assert len(set(addresses)) == 10
    assert addresses[0] == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert addresses[9] == "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"


def test_artifacts_are_shipped_with_both_eip3009_overloads() -> None:
    abi = chainlib.load_artifact("TestUSDC")["abi"]
    overloads = [f for f in abi if f.get("name") == "transferWithAuthorization"]
    assert sorted(len(f["inputs"]) for f in overloads) == [7, 9]
    names = {f.get("name") for f in abi}
    assert {"authorizationState", "version", "eip712Domain", "mint"} <= names
    assert chainlib.load_artifact("Multicall3")["deployedBytecode"].startswith("0x6")
    assert len(chainlib.TRANSFER_WITH_AUTHORIZATION_SELECTORS) == 2


def test_nonces_are_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        chainlib.authorization_state(
            "http://127.0.0.1:1", "0x" + "11" * 20, "0x" + "22" * 20, "0x01"
        )
