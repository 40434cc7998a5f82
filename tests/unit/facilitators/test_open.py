"""Which facilitator a config builds: `local:` is the settlement engine on the config's
chain (no node touched to learn it), with the SDK as delegate only under its own key."""

from __future__ import annotations

from gateway import config
from gateway.config.settings import Settings
from gateway.facilitators import chain_id, open_facilitator
from gateway.facilitators.engine import EngineFacilitator
from gateway.facilitators.remote import RemoteFacilitator

KEY, KEY2, DELEGATE = ("0x" + c * 64 for c in "abc")


def settings(facilitator: str, network: str = "eip155:84532") -> Settings:
    text = (
        "upstream: http://127.0.0.1:9\n"
        f"network: {network}\n"
        "pay_to: '0x000000000000000000000000000000000000dEaD'\n"
        f"facilitator: {facilitator}\n"
        "routes: [{path: /p, price: $0.001}]\n"
    )
    return config.loads(text, "gateway.yaml", {})


def test_local_builds_the_engine_on_the_configured_chain() -> None:
    local = f"{{local: {{rpc_url: http://127.0.0.1:1, private_key: {KEY}, keys: [{KEY2}]}}}}"
    built = open_facilitator(settings(local))
    assert isinstance(built, EngineFacilitator)
    assert built.network == "eip155:84532"  # known before start(): no eth_chainId
    assert built.options.keys == (KEY, KEY2) and built.options.chain_id == 84532
    assert [k.network for k in built.get_supported().kinds] == ["eip155:84532", "base-sepolia"]


def test_the_sdk_delegate_only_with_its_own_key() -> None:
    local = (
        f"{{local: {{rpc_url: http://127.0.0.1:1, private_key: {KEY}, delegate_key: {DELEGATE}}}}}"
    )
    built = open_facilitator(settings(local))
    assert isinstance(built, EngineFacilitator)
    signers = built.get_supported().signers["eip155:*"]
    assert len(signers) == 2 and signers[0] == built.addresses[0]


def test_remote_stays_remote() -> None:
    assert isinstance(open_facilitator(settings("{url: http://f.example}")), RemoteFacilitator)


def test_chain_id_of_a_network() -> None:
    assert chain_id("eip155:8453") == 8453
    assert chain_id("base-sepolia") == 84532
    assert chain_id("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp") is None
