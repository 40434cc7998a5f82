"""One validator per format, for the config loader and the request path alike.

Each format is checked in exactly one place, so the config cannot accept what the request path
refuses (or the other way round): a network id the loader takes is one a payment can be matched
on. Pure: text in, a value or `ValueError` with a message for a person out; no I/O, no state.

- network id: CAIP-2 `eip155:<chain id>` (or a v1 name such as `base-sepolia` in the config);
- EVM address: `0x` and 40 hex digits, EIP-55 checksum checked when the case is mixed;
- HTTP token (RFC 9110): header names and methods;
- duration: `10s`, `250ms`, `1m30s`, `1.5`;
- price: `"$0.001"` (and its display form, `format_price`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING

from eth_utils.address import is_checksum_address, to_checksum_address
from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS

if TYPE_CHECKING:
    from gateway.config.settings import Requirement

# A chain id is a uint64 in practice (EIP-2294 bounds it well below); 18 digits keeps every id
# an int64 for the libraries that store it so.
EIP155 = re.compile(r"eip155:([1-9][0-9]{0,17})")
_LONG_EIP155 = re.compile(r"eip155:[1-9][0-9]{18,}")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

_PRICE = re.compile(r"\$(\d+(?:\.\d+)?)")
_SOME_NUMBER = re.compile(r"\d*\.?\d+")
_MAX_PRICE_CHARS = 40
# Enough digits for any uint256 amount: Decimal's default 28 would round silently.
PRECISION = 100


# --- messages ---------------------------------------------------------------------------


def quote(text: str) -> str:
    """How a value is shown in messages."""
    return '"' + text + '"'


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`; did you mean "x"?` or a list of what is allowed."""
    choices = sorted(options)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {quote(close[0])}?"
    return "; expected one of: " + ", ".join(choices)


# --- network id -------------------------------------------------------------------------


def chain_id(network: str) -> int | None:
    """The EVM chain id of a CAIP-2 `eip155:<id>` network, else None."""
    found = EIP155.fullmatch(network)
    return int(found.group(1)) if found else None


def parse_network(text: str) -> str:
    """CAIP-2 `eip155:<chain id>`, or a v1 name such as `base-sepolia`, as CAIP-2."""
    if chain_id(text) is not None:
        return text
    if text in V1_NETWORK_CHAIN_IDS:
        return f"eip155:{V1_NETWORK_CHAIN_IDS[text]}"
    if _LONG_EIP155.fullmatch(text):
        raise ValueError(f"{quote(text)}: a chain id has at most 18 digits")
    if ":" in text:
        raise ValueError(
            f"{quote(text)} is not a supported network; write eip155:<chain id>, "
            "e.g. eip155:84532 (only EVM networks are supported)"
        )
    raise ValueError(
        f"{quote(text)} is not a known network name{did_you_mean(text, V1_NETWORK_CHAIN_IDS)} "
        "(or write eip155:<chain id>)"
    )


# --- EVM address ------------------------------------------------------------------------


def is_address(text: str) -> bool:
    return bool(ADDRESS.fullmatch(text))


def parse_evm_address(text: str) -> str:
    """Checksummed; a mixed-case address must already carry a valid checksum."""
    if not is_address(text):
        raise ValueError(f"{quote(text)} is not an address (0x followed by 40 hex digits)")
    digits = text[2:]
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(text):
        raise ValueError(
            f"{quote(text)} has a bad checksum (mixed case that does not match EIP-55); "
            "check it for a typo, or write it all lower-case"
        )
    return str(to_checksum_address(text))


# --- HTTP token -------------------------------------------------------------------------


def is_token(text: str) -> bool:
    return bool(HTTP_TOKEN.fullmatch(text))


def parse_token(text: str, what: str) -> str:
    if not is_token(text):
        raise ValueError(f"{quote(text)} is not a valid {what}")
    return text


# --- duration ---------------------------------------------------------------------------


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """`10s`, `250ms`, `1m30s`, `1.5s`, `2h`, or a plain number of seconds."""
    text = text.strip()
    if text.startswith("-"):
        raise ValueError(f"{quote(text)} is negative; a duration must be positive")
    if _NUMBER.fullmatch(text):
        seconds = Decimal(text)
    elif text and _DURATION_PART.sub("", text) == "":
        seconds = sum(
            (Decimal(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text)),
            Decimal(0),
        )
    else:
        raise ValueError(f"{quote(text)} is not a duration; write e.g. 10s, 250ms, 1m or 1.5")
    if seconds == 0 and not allow_zero:
        raise ValueError("must be more than 0")
    return float(seconds)


# --- price ------------------------------------------------------------------------------


def parse_usd(text: str) -> Decimal:
    """`"$0.001"` to Decimal dollars; > 0 (a price of nothing is written `free`)."""
    stripped = text.strip()
    if len(stripped) > _MAX_PRICE_CHARS:
        raise ValueError("is too long to be a price")
    if "-" in stripped:
        raise ValueError(f"{quote(text)} is negative; a price must be more than $0")
    match = _PRICE.fullmatch(stripped)
    if match is None:
        number = _SOME_NUMBER.search(stripped.replace(",", ""))
        hint = f'"${number.group(0)}"' if number else '"$0.001" or free'
        raise ValueError(f"{quote(text)} is not a price; write {hint}")
    dollars = Decimal(match.group(1))
    if dollars == 0:
        raise ValueError(f"{quote(text)} is zero; write free for a route without charge")
    return dollars


def format_price(req: Requirement) -> str:
    """`$0.001 (1000 atomic units of USDC)`, for the `check` table and logs."""
    if req.symbol == req.asset:  # a token whose decimals the config does not know
        return f"{req.amount} atomic units of token {req.asset}"
    with localcontext() as ctx:
        ctx.prec = PRECISION
        dollars = Decimal(req.amount).scaleb(-req.decimals).normalize()
    return f"${dollars:f} ({req.amount} atomic units of {req.symbol})"
