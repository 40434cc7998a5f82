"""A serving process to SIGKILL mid-run: the SDK's batch-settlement server (its channels in
the gateway's Redis channel storage) taking one payer's deposit and vouchers, printing
`{"served": n}` after each paid call it answered. Settings in $X402_CHANNEL_RUN (JSON)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from eth_account import Account

from gateway.store.channels import RedisChannelStorage
from tests.e2e.channel_parts import build_rig, call_once, payer_client


async def main() -> None:
    run = json.loads(os.environ["X402_CHANNEL_RUN"])
    rig = build_rig(
        rpc_url=run["rpc_url"],
        network=run["network"],
        facilitator_key=run["facilitator_key"],
        authorizer_key=run["authorizer_key"],
        receiver=run["receiver"],
        token=run["token"],
        price=run["price"],
        storage=RedisChannelStorage(run["redis_url"]),
    )
    client = payer_client(
        Account.from_key(run["payer_key"]), run["rpc_url"], run["network"], run["token"]
    )
    for served in range(1, run["calls"] + 1):
        await call_once(rig, client)
        print(json.dumps({"served": served}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
