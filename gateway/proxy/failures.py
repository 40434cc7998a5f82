"""What the client is told when the origin failed before its response head arrived: each
aiohttp client error as the gateway's own `UpstreamError` (502) or `UpstreamTimeout` (504),
naming the origin (never the full URL, which may carry a key) and what went wrong."""

from __future__ import annotations

import errno

import aiohttp

from gateway.config.settings import Timeouts
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout


def upstream_failure(exc: aiohttp.ClientError, where: str, timeouts: Timeouts) -> GatewayError:
    """The gateway's answer to an origin that failed before its response head arrived."""
    if isinstance(exc, aiohttp.ServerTimeoutError):  # ConnectionTimeoutError is one
        return _timed_out(exc, where, timeouts)
    if isinstance(exc, aiohttp.ClientConnectorError):  # before ClientOSError, its base
        return _not_connected(exc, where)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(f"{where} closed the connection before answering")
    if isinstance(exc, aiohttp.ClientOSError):
        return _connection_failed(exc, where)
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError(f"{where} sent an invalid HTTP response: {exc.message}")
    return UpstreamError(f"request to {where} failed: {exc}")


def _timed_out(exc: aiohttp.ServerTimeoutError, where: str, timeouts: Timeouts) -> GatewayError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(f"connecting to {where} timed out after {timeouts.connect:g}s")
    return UpstreamTimeout(f"{where} sent no response for {timeouts.read:g}s")


def _connection_failed(exc: aiohttp.ClientOSError, where: str) -> GatewayError:
    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return UpstreamError(f"{where} reset the connection before answering")
    return UpstreamError(f"connection to {where} failed: {exc.strerror or exc}")


def _not_connected(exc: aiohttp.ClientConnectorError, where: str) -> GatewayError:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return UpstreamError(f"cannot resolve the origin host of {where}")
    os_error = exc.os_error
    if isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED:
        return UpstreamError(f"connection refused to {where}")
    return UpstreamError(f"cannot connect to {where}: {os_error.strerror or os_error}")
