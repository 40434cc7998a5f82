"""The demo's port choice: the documented defaults unless taken or overridden."""

from __future__ import annotations

import socket

import pytest

from gateway.demo.chain import port_is_free
from gateway.demo.stack import DemoError, choose_port


def test_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_X_PORT", "12345")
    assert choose_port("DEMO_X_PORT", 8402, set()) == 12345


def test_bad_env_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_X_PORT", "eighty")
    with pytest.raises(DemoError, match="DEMO_X_PORT"):
        choose_port("DEMO_X_PORT", 8402, set())


def test_taken_default_falls_back_to_a_free_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_X_PORT", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken_port = busy.getsockname()[1]
        assert not port_is_free(taken_port)
        chosen = choose_port("DEMO_X_PORT", taken_port, set())
    assert chosen != taken_port


def test_one_port_is_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_X_PORT", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        default = probe.getsockname()[1]
    taken: set[int] = set()
    first = choose_port("DEMO_X_PORT", default, taken)
    second = choose_port("DEMO_X_PORT", default, taken)
    assert first != second
