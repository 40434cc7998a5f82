"""`x402-gateway facilitator`: its settings from a config file and/or flags; every refusal
before anything is started, and keys never echoed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway import config
from gateway import facilitator_cli as command
from gateway.cli import main

KEY, KEY2 = "0x" + "ab" * 32, "0x" + "cd" * 32
LOCAL = f"{{local: {{rpc_url: http://127.0.0.1:8545, private_key: {KEY}, batch_window: 20ms}}}}"
CONFIG = f"""\
upstream: http://127.0.0.1:9
network: base-sepolia
pay_to: '0x000000000000000000000000000000000000dEaD'
facilitator: {LOCAL}
routes: [{{path: /p, price: $0.001}}]
"""


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    return parser.parse_args(["facilitator", *argv])


def test_config_file_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = config.loads(CONFIG, "gateway.yaml", {})
    local, network = command.local_settings(args(), settings)
    assert (local.keys, local.batch_window, network) == ((KEY,), 0.02, "eip155:84532")
    monkeypatch.setenv("K2", KEY2)
    local, _ = command.local_settings(args("--key-env", "K2", "--rpc-url", "http://n:1"), settings)
    assert (local.keys, local.rpc_url) == ((KEY2,), "http://n:1")


def test_flags_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K1", KEY)
    monkeypatch.setenv("K2", KEY2)
    local, network = command.local_settings(
        args("--rpc-url", "http://n:1", "--key-env", "K1", "--key-env", "K2"), None
    )
    assert local.keys == (KEY, KEY2) and network == ""


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "give --config FILE with facilitator.local, or --rpc-url and --key-env"),
        (["--rpc-url", "http://n:1", "--key-env", "NOPE"], {}, "NOPE is not set"),
        (["--rpc-url", "http://n:1", "--key-env", "K"], {"K": "0x12"}, "K is not a private key"),
        (["--rpc-url", "ws://n:1", "--key-env", "K"], {"K": KEY}, "rpc_url: must be an http"),
        (["--rpc-url", "http://n:1", "--key-env", "K", "--listen", "x"], {"K": KEY}, "not an"),
        (
            ["--rpc-url", "http://n:1", "--key-env", "K", "--max-batch", "0"],
            {"K": KEY},
            "max_batch",
        ),
    ],
)
def test_refusals(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["facilitator", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and KEY[2:] not in err and "0x12" not in err


def test_a_config_without_local_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        CONFIG.replace(
            LOCAL,
            "{url: http://f.example}",
        )
    )
    assert main(["facilitator", "--config", str(path)]) == 2
    assert "no facilitator.local" in capsys.readouterr().err
