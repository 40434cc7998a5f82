"""`verify: local`'s chain reads in Prometheus (`x402_gateway_chain_reads_total`): ok, the
refusal reason, or fallback (the RPC failed or rests: the facilitator verified). The reads
go to a small JSON-RPC node on the test's loop, as in test_local_verify."""

from __future__ import annotations

from x402.mechanisms.evm.constants import ERR_INSUFFICIENT_BALANCE

from gateway.composition import default_facilitator
from gateway.config import loads
from gateway.demo.chain import free_port
from gateway.facilitators.local_verify import LocalVerify
from gateway.observe.metrics import Metrics
from tests.unit.facilitators.engine import helpers as h
from tests.unit.facilitators.test_local_verify import Recording, answers, uint, verifier_on


def reads(metrics: Metrics, outcome: str) -> float:
    labels = {"network": h.NETWORK, "outcome": outcome}
    return metrics.registry.get_sample_value("x402_gateway_chain_reads_total", labels) or 0.0


async def test_each_chain_read_is_counted_by_its_outcome() -> None:
    metrics = Metrics()
    async with verifier_on(answers(uint(1000), uint(0))) as (verifier, _, _seen):
        verifier.on_chain_read = metrics.chain_read
        assert (await verifier.verify(h.sdk_signed(h.account()), h.requirements())).is_valid
    async with verifier_on(answers(uint(999), uint(0))) as (verifier, _, _seen):
        verifier.on_chain_read = metrics.chain_read
        poor = await verifier.verify(h.sdk_signed(h.account()), h.requirements())
        assert not poor.is_valid
    dead = f"http://127.0.0.1:{free_port()}/"
    resting = LocalVerify(Recording(), rpc_urls={h.NETWORK: dead}, cooldown=3600)
    resting.on_chain_read = metrics.chain_read
    await resting.start()
    try:
        for _ in range(2):  # the RPC fails, then rests: the facilitator verifies both
            assert (await resting.verify(h.sdk_signed(h.account()), h.requirements())).is_valid
    finally:
        await resting.close()
    assert reads(metrics, "ok") == 1
    assert reads(metrics, ERR_INSUFFICIENT_BALANCE) == 1
    assert reads(metrics, "fallback") == 2


def test_the_gateway_counts_verify_local_reads_in_its_metrics() -> None:
    settings = loads(
        f"""
upstream: http://127.0.0.1:9
facilitator: {{url: "http://127.0.0.1:9/"}}
verify: local
networks: {{{h.NETWORK}: {{rpc_url: "http://127.0.0.1:9/"}}}}
pay_to: "0x000000000000000000000000000000000000dEaD"
routes:
  - path: /paid/*
    price: "$0.001"
"""
    )
    metrics = Metrics()
    facilitator = default_facilitator(settings, metrics)
    assert isinstance(facilitator, LocalVerify)
    facilitator.on_chain_read(h.NETWORK, "ok")
    assert reads(metrics, "ok") == 1
