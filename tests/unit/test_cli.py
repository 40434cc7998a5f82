"""The command line: check (table, warnings, every error, exit codes), --version, env config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import main

GOOD = """\
upstream: http://127.0.0.1:8080
facilitator: {url: "http://127.0.0.1:9/"}
pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
routes:
  - path: /v1/forecast/*
    methods: [GET]
    price: "$0.001"
  - path: /v1/forecast/today
    methods: [GET]
    price: "$0.002"
  - path: /healthz
    price: free
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


def test_check_prints_the_compiled_table_and_shadow_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", write(tmp_path, GOOD)]) == 0
    out, err = capsys.readouterr()
    assert "ok" in out.splitlines()[0]
    row = next(line for line in out.splitlines() if "/v1/forecast/*" in line)
    assert re.search(r"GET\S*\s+/v1/forecast/\*\s+\$0\.001 \(1000 atomic units of USDC\)", row)
    assert "http://127.0.0.1:8080" in row
    assert "routes[1] /v1/forecast/today is shadowed by routes[0] /v1/forecast/*" in err


def test_check_reports_every_error_with_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = GOOD.replace('"$0.001"', '"0.001$"').replace(
        'methods: [GET]\n    price: "$0.002"', 'methods: [GET]\n    prise: "$0.002"'
    )
    path = write(tmp_path, bad)
    assert main(["check", "--config", path]) == 1
    err = capsys.readouterr().err
    assert f'{path}:7 routes[0].price: "0.001$" is not a price' in err
    assert "routes[1].prise: unknown key" in err and 'did you mean "price"' in err
    assert f"{path}:8 routes[1].price: required" in err
    assert "3 error(s)" in err


def test_config_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("X402_GATEWAY_CONFIG", write(tmp_path, GOOD))
    assert main(["routes"]) == 0
    assert "/healthz" in capsys.readouterr().out


def test_missing_config_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X402_GATEWAY_CONFIG", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["check"])
    assert exc.value.code == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"x402-gateway {__version__}"


def test_secrets_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace(
        'facilitator: {url: "http://127.0.0.1:9/"}',
        'facilitator: {url: "http://127.0.0.1:9/", headers: {Authorization: "Bearer s3cr3t"}}',
    ).replace("upstream: http://127.0.0.1:8080", "upstream: ftp://nope")
    assert main(["check", "--config", write(tmp_path, text)]) == 1
    out, err = capsys.readouterr()
    assert "s3cr3t" not in out + err


@pytest.mark.parametrize("where", ["top", "accepts"])
def test_check_refuses_a_chain_id_the_request_path_could_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    # One network-id rule (gateway.formats) for config and requests: an id too long for the
    # request path is refused at load, with its file:line, never first at request time.
    network = "eip155:1234567890123456789012"
    if where == "top":
        text = GOOD.replace("routes:", f"network: {network}\nroutes:")
        key, line = "network", 4
    else:
        text = GOOD.replace(
            'price: "$0.002"',
            f'accepts: [{{network: "{network}", asset: "0x{"1" * 40}", amount: "1000", '
            'extra: {name: T, version: "1"}}]',
        )
        key, line = "routes[1].accepts[0].network", 10
    path = write(tmp_path, text)
    assert main(["check", "--config", path]) == 1
    err = capsys.readouterr().err
    assert f'{path}:{line} {key}: "{network}": a chain id has at most 18 digits' in err
    assert "nothing was started" in err


def test_check_warns_when_a_priced_network_has_no_rpc_to_reconcile_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", write(tmp_path, GOOD)]) == 0
    _, err = capsys.readouterr()
    assert "warning: no RPC URL for eip155:84532" in err and "stays in flight" in err
    with_rpc = GOOD.replace("routes:", 'networks: {eip155:84532: {rpc_url: "http://a:1"}}\nroutes:')
    assert main(["check", "--config", write(tmp_path, with_rpc)]) == 0
    _, err = capsys.readouterr()
    assert "no RPC URL" not in err
    assert main(["payments", "--reconcile", "--config", write(tmp_path, GOOD)]) == 1
    assert "store: memory" in capsys.readouterr().err
