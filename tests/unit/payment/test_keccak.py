"""The request path's keccak (safe-pysha3 through eth-hash) gives eth-hash's own digests."""

from __future__ import annotations

from eth_hash.backends import pycryptodome
from eth_hash.main import Keccak256
from hypothesis import given
from hypothesis import strategies as st

from gateway.payment.keccak import keccak

REFERENCE = Keccak256(pycryptodome.backend)  # what eth-hash's auto-detection picks here


def test_known_digests() -> None:
    # keccak-256 (not NIST SHA3-256, which pads differently): the empty string and "abc".
    assert keccak(b"").hex() == ("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
    assert keccak(b"abc").hex() == (
        "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
    )


@given(st.binary(max_size=600))
def test_same_as_pycryptodome(data: bytes) -> None:
    assert keccak(data) == REFERENCE(data)
    assert keccak(bytearray(data)) == REFERENCE(data)


def test_the_c_backend_is_in_use() -> None:
    from eth_hash.backends import pysha3

    assert getattr(keccak, "__self__", None) is pysha3.backend
