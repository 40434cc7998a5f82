"""x402 paywall gateway: a streaming reverse proxy that charges per request through x402."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("x402-gateway")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
