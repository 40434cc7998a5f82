"""`x402-gateway channels`: the list from a real redis-server's channel storage, `claim`
taking the gateway's claim lock, and a memory store refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from gateway.cli import main
from gateway.store.channels import RedisChannelStorage
from gateway.store.claim_lock import RedisClaimLock
from gateway.store.redis import RedisStore
from tests.procs import RedisServer
from tests.unit.payment.channel_fakes import new_channel, put

CONFIG = """
upstream: http://127.0.0.1:9
facilitator: {{url: "http://127.0.0.1:9/"}}
pay_to: "0x000000000000000000000000000000000000dEaD"
admin: off
store: {store}
routes:
  - path: /v1/infer/*
    price: "$0.001"
    channel: {{min_deposit: "$1.00"}}
"""


@pytest.fixture
def db(redis: RedisServer) -> Iterator[str]:
    """A database of its own on the session's redis-server (its channels only)."""
    url = redis.url.rsplit("/", 1)[0] + "/7"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def write(tmp_path: Path, store: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(store=store))
    return str(path)


def test_a_memory_store_has_no_channels_to_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["channels", "--config", write(tmp_path, "memory")]) == 1
    assert "store: memory keeps channels inside the gateway process" in capsys.readouterr().err


def test_the_list_shows_what_each_channel_owes(
    tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = RedisChannelStorage(db)
    owing = put(storage, new_channel(charged=1_500_000, claimed=500_000))
    put(storage, new_channel(charged=2000, claimed=2000, withdraw_requested_at=1))
    storage.close()
    config = write(tmp_path, db)

    assert main(["channels", "--config", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "CHANNEL",
        "NETWORK",
        "PAYER",
        "BALANCE",
        "CHARGED",
        "CLAIMED",
        "UNCLAIMED",
    ]
    row = next(line for line in out if line.startswith(owing.channel_id[:18]))
    assert "eip155:84532" in row and "$1.500000" in row and "$1.000000" in row
    assert any(line.endswith("withdrawing") for line in out)
    assert out[-1] == "2 channel(s), $1.000000 unclaimed"

    assert main(["channels", "--format", "jsonl", "--config", config]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    mine = next(r for r in rows if r["channel"] == owing.channel_id)
    assert (mine["charged"], mine["claimed"], mine["unclaimed"]) == (1_500_000, 500_000, 1_000_000)
    assert sorted(r["withdrawing"] for r in rows) == [False, True]


def test_claim_waits_for_a_gateway_s_round_and_claims_nothing_twice(
    tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, db)

    async def hold() -> None:
        store = RedisStore(db)
        lease = await RedisClaimLock(store.client, store.call).acquire(30.0)
        assert lease is not None
        await store.close()

    asyncio.run(hold())  # a gateway's round holds the lock
    assert main(["channels", "claim", "--all", "--config", config]) == 3
    assert "a gateway is claiming right now; try again" in capsys.readouterr().err
    sync_redis.Redis.from_url(db).delete("x402:{channels}:claim-lock")
    # Nothing owed: the lock is taken, nothing is sent (the facilitator is not even up).
    assert main(["channels", "claim", "--config", config, "--all"]) == 0
    assert "0 target(s) claimed" in capsys.readouterr().err


def test_check_warns_of_a_claim_interval_too_close_to_the_withdraw_delay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = CONFIG.format(store="memory") + "channels: {claim_every: 10m, withdraw_delay: 15m}\n"
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "channels.claim_every (600s) is more than a third of withdraw_delay (900s)" in err
    assert "store: memory keeps channel state in this process" in err


def test_a_sentinel_store_has_no_channels_to_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    text = CONFIG.format(store="redis+sentinel://127.0.0.1:1/mymaster")
    path.write_text(text.replace('    channel: {min_deposit: "$1.00"}\n', ""))
    assert main(["channels", "--config", str(path)]) == 1
    assert "channels live in one Redis server" in capsys.readouterr().err
