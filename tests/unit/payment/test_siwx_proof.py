"""gateway.payment.siwx_proof: the EIP-55 answers kept per address (the signature check
itself is held to the SDK's in test_sessions.py)."""

from __future__ import annotations

import os

from eth_account import Account
from eth_utils.address import to_checksum_address
from x402.extensions.sign_in_with_x import encode_siwx_header

from gateway.config import loads
from gateway.payment.sessions import Sessions
from gateway.payment.siwx_proof import Checksums, is_checksummed
from gateway.store.sessions import MemorySessions
from tests.unit.payment.test_sessions import CONFIG, REPORTS, signed


def test_kept_answers_are_the_checks_answers() -> None:
    checksums = Checksums(maxsize=8)
    good = to_checksum_address(os.urandom(20))
    bad = good[:2] + good[2:].swapcase() if good[2:].lower() != good[2:] else good
    for address in (good, good.lower(), bad, "0x1234", "not an address", good):
        assert checksums(address) == is_checksummed(address)
        assert checksums(address) == is_checksummed(address)  # the kept answer


def test_the_cache_is_bounded() -> None:
    checksums = Checksums(maxsize=16)
    for _ in range(100):
        checksums(to_checksum_address(os.urandom(20)))
    assert len(checksums) == 16


async def test_a_sessions_object_keeps_the_addresses_it_checked() -> None:
    checksums = Checksums()
    sessions = Sessions(loads(CONFIG), MemorySessions(), checksums)
    account = Account.create()
    await sessions.paid(REPORTS, account.address)
    for _ in range(3):
        header = encode_siwx_header(await signed(sessions, account))
        assert await sessions.sign_in(REPORTS, "/reports/a", header) == account.address
    assert len(checksums) == 1
