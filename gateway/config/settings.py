"""Frozen, typed settings: what `config.load()` builds once at start-up.

Everything here is already compiled and checked (prices in atomic units, durations in
seconds, addresses checksummed), so the request path never parses configuration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal

SettleMode = Literal["after", "before"]
Transfer = Literal["eip3009", "permit2"]  # how a token is moved: its own EIP-3009, or Permit2

EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value came from, for messages: `gateway.yaml:14`."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Address:
    """A listen address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AssetSpec:
    """An ERC-20 token: its EIP-712 domain (name, version) is what payers sign against."""

    address: str
    name: str
    version: str
    decimals: int
    symbol: str = "USDC"
    transfer: Transfer = "eip3009"


@dataclass(frozen=True, slots=True)
class Requirement:
    """One accepted way to pay for a route (a v2 `PaymentRequirements`, compiled)."""

    scheme: str
    network: str  # CAIP-2, e.g. eip155:84532
    asset: str  # checksummed token address
    amount: int  # atomic units
    pay_to: str  # checksummed recipient
    max_timeout_seconds: int = 300
    # Python 3.11 refuses a mappingproxy as a dataclass default (unhashable there).
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    decimals: int = 6  # for display only
    symbol: str = "USDC"  # for display only


@dataclass(frozen=True, slots=True)
class Metered:
    """An `upto` route (`price: {upto, default}`): the payer authorizes the maximum (the
    route's requirement amount); the origin states what to charge, in its
    `Settlement-Overrides` response header or, for a stream, in its last SSE event named
    `sse_event`; when it states nothing, `default` atomic units are charged."""

    default: int
    sse_event: str | None = None


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """`access: {for: 24h}`: a payer who paid for the route signs in (SIWX) instead of paying
    again, for `seconds` after the payment."""

    seconds: float


@dataclass(frozen=True, slots=True)
class ChannelTerms:
    """`channel: {min_deposit: "$1.00"}`: the route also takes batch-settlement vouchers
    (one deposit on chain, then an off-chain voucher per call) at its own price."""

    min_deposit: Decimal  # dollars; at least the route's price


@dataclass(frozen=True, slots=True)
class ChannelsSettings:
    """`channels: {claim_every: 60s, claim_over: "$5", withdraw_delay: 1h}`: when the
    gateway claims served vouchers on chain, and the withdraw delay its channels carry."""

    claim_every: float = 60.0  # seconds between claims
    claim_over: Decimal = Decimal(5)  # dollars unclaimed in one channel: claim sooner
    withdraw_delay: int = 3600  # seconds; the contract's bounds are 900 to 2,592,000
    # The receiver authorizer's key (signs claims and refunds); None: the facilitator's.
    authorizer_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: `count` requests per `seconds`, up to `count` at once (`10/s`)."""

    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}s"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Request rates, per payer (the address in the payment) and per client IP."""

    per_payer: Rate | None = None
    per_ip: Rate | None = None
    # Most a payer may spend per UTC day, in millionths of a dollar (top level only).
    daily_spend: int | None = None

    @property
    def any(self) -> bool:
        return self.per_payer is not None or self.per_ip is not None or bool(self.daily_spend)


NO_RATE_LIMITS = RateLimits()


@dataclass(frozen=True, slots=True)
class Discovery:
    """How to call a route, for catalogues (the `bazaar` extension, `/.well-known/x402`):
    its input (query parameters, or a body) as JSON Schema properties, and its output."""

    input_in: Literal["query", "body"] = "query"
    properties: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    required: tuple[str, ...] = ()
    example: Mapping[str, Any] | None = None  # example input values
    body_type: Literal["json", "form-data", "text"] = "json"
    output_example: Any = None
    output_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PriceHook:
    """`price: {hook: URL, cache: 30s}`: the price of each request, asked of the owner's
    service (POST {method, path, query, headers}; answer {"price": "$0.003"} or "free")."""

    url: str
    cache: float = 30.0  # seconds a price is kept per (method, path, query, headers)
    timeout: float = 2.0  # slower than this: 503, nothing forwarded
    headers: tuple[str, ...] = ()  # request headers sent to the hook (and part of the key)


@dataclass(frozen=True, slots=True)
class PriceRule:
    """One `price_by:` entry: the value of a query parameter or header picks the price."""

    source: Literal["query", "header"]
    name: str
    cases: Mapping[str, int | None]  # value -> atomic amount; None: free


@dataclass(frozen=True, slots=True)
class McpPricing:
    """`mcp: {tools: {search: "$0.01"}, default: free}` on an MCP streamable-HTTP endpoint:
    `tools/call` priced by tool name; every other JSON-RPC method is free."""

    tools: Mapping[str, Requirement | None]  # None: that tool is free
    default: Requirement | None = None  # tools not named; None: free


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """One entry of `routes:`, in file order (`index` is its position)."""

    index: int
    path: str  # the pattern as written: exact, or ending in `/*`
    methods: frozenset[str] | None  # None: every method
    accepts: tuple[Requirement, ...]  # empty: a free route
    description: str = ""
    mime_type: str = "application/json"
    upstream: str | None = None  # None: the default upstream
    settle: SettleMode = "after"
    price_text: str = "free"  # as written, for `check` and logs
    source: Source | None = None
    access: AccessSettings | None = None  # SIWX sign-in after one payment (issue 14)
    # The route's own request rates (its own buckets), on top of the global `limits`.
    rate_limits: RateLimits = NO_RATE_LIMITS
    discovery: Discovery | None = None  # None: not listed with call details
    # Dynamic prices: `accepts` then holds one template whose amount each request sets.
    price_hook: PriceHook | None = None
    price_by: tuple[PriceRule, ...] = ()
    mcp: McpPricing | None = None  # an MCP endpoint: priced per tool, the route itself is free
    metered: Metered | None = None  # an `upto` price: the origin states the amount
    channel: ChannelTerms | None = None  # also batch-settlement vouchers (issue 14)

    @property
    def dynamic(self) -> bool:
        return self.price_hook is not None or bool(self.price_by)

    @property
    def free(self) -> bool:
        return not self.accepts

    @property
    def name(self) -> str:
        """A stable label for logs and metrics."""
        return self.path


@dataclass(frozen=True, slots=True)
class RemoteFacilitatorSettings:
    url: str
    # may carry secrets
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY, repr=False)
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class LocalFacilitatorSettings:
    """Runs the SDK's facilitator in-process (its blocking web3 calls in a thread pool)."""

    rpc_url: str = field(repr=False)  # RPC URLs often carry an API key
    private_key: str = field(repr=False)
    timeout: float = 30.0  # how long a settle waits for its receipt
    # The settlement engine's knobs (issue 13; gateway/facilitators/engine/options.py).
    more_keys: tuple[str, ...] = field(default=(), repr=False)  # settle in parallel
    delegate_key: str | None = field(default=None, repr=False)  # the SDK's, for other schemes
    batch_window: float = 0.0  # 0: every payment its own transaction
    max_batch: int = 50
    poll_interval: float = 0.25
    min_gas_balance: int = 0  # wei; readiness fails below it
    max_fee_per_gas: int = 500 * 10**9  # wei
    reorg_depth: int = 6
    stuck_blocks: int = 3
    stuck_seconds: float = 30.0

    @property
    def keys(self) -> tuple[str, ...]:
        """Every settler key, `private_key` first."""
        return (self.private_key, *self.more_keys)


FacilitatorSettings = RemoteFacilitatorSettings | LocalFacilitatorSettings


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """How the gateway reads one network's chain (reconciling crashed settlements)."""

    rpc_url: str = field(repr=False)  # RPC URLs often carry an API key


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0  # to the origin
    read: float = 60.0  # idle time between bytes from the origin
    request_header: float = 10.0  # a client's time to send its request head
    request_body: float = 60.0  # idle time between bytes of a client's request body
    shutdown_grace: float = 30.0  # in-flight requests get this long after SIGTERM
    keepalive: float = 75.0  # an idle client connection is closed after this long


@dataclass(frozen=True, slots=True)
class Limits:
    request_body: int | None = None  # bytes; None: unlimited (streamed anyway)
    header_size: int = 8190  # bytes of one request header line
    connections: int = 1024  # concurrent client connections
    payment_header: int = 16384  # bytes of PAYMENT-SIGNATURE / X-PAYMENT
    # Request rates on every priced route (one bucket per payer / IP across all of them).
    rates: RateLimits = NO_RATE_LIMITS


@dataclass(frozen=True, slots=True)
class Idempotency:
    """The payment-identifier extension: a paid response kept for a retry with the same id."""

    keep_body: int = 1 << 20  # bytes; a larger response is streamed, not kept (retry: 409)
    keep_for: float = 86400.0  # seconds a kept response answers retries
    required: bool = False  # True: a payment without an identifier is refused (400)


@dataclass(frozen=True, slots=True)
class Cors:
    """The CORS policy of the answers the gateway writes itself (402, problem+json, preflights
    on priced paths). `origins`: allowed page origins, `("*",)` for any; `credentials`: let a
    page send cookies (only with explicit origins); `max_age`: how long a preflight is cached."""

    origins: tuple[str, ...] = ("*",)
    credentials: bool = False
    max_age: float = 600.0

    @property
    def any_origin(self) -> bool:
        return "*" in self.origins


@dataclass(frozen=True, slots=True)
class Settings:
    source: str  # the config file's path
    listen: Address
    upstream: str
    routes: tuple[RouteSettings, ...]
    admin: Address | None = None
    facilitators: tuple[FacilitatorSettings, ...] = ()
    network: str = "eip155:84532"
    pay_to: str | None = None
    asset: AssetSpec | None = None
    # Named tokens (`assets:`), for routes' `asset:`.
    assets: Mapping[str, AssetSpec] = field(default_factory=lambda: EMPTY)
    store: str = field(default="memory", repr=False)  # a redis:// URL may hold a password
    payer_header: str = "X-Payer"
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    public_url: str | None = None
    case_insensitive_paths: bool = True  # `false` only for origins that really tell case apart
    log_level: str = "info"
    workers: int = 1
    server_timing: bool = False  # opt-in `Server-Timing` header on paid responses
    networks: Mapping[str, NetworkSettings] = field(default_factory=lambda: EMPTY)  # by CAIP-2
    idempotency: Idempotency | None = None  # None: the extension is not offered
    cors: Cors = Cors()
    verify: str = (
        "facilitator"  # "local": checked in process (gateway/facilitators/local_verify.py)
    )
    channels: ChannelsSettings = ChannelsSettings()  # batch-settlement claims (issue 14)
