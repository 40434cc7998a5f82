"""keccak-256 for the request path: every payment, voucher and SIWX proof hashes two to four
times (EIP-712 digests, an address from a public key, EIP-55 checksums).

Through `safe-pysha3` (eth-hash's own `pysha3` backend, installed by its `pysha3` extra),
chosen here rather than by eth-hash's auto-detection, which takes pycryptodome whenever it is
installed (web3 installs it): 0.9 µs a hash against 4.7 µs through pycryptodome's cffi
wrapper (96 bytes, `timeit`), the same digests (tests/unit/payment/test_keccak.py).
"""

from __future__ import annotations

from eth_hash.backends.pysha3 import keccak256

# The backend's own function, not eth-hash's `Keccak256` front (its type check is one Python
# frame more per hash; every caller here passes bytes).
keccak = keccak256
