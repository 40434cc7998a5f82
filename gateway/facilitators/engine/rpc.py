"""JSON-RPC over kept-alive connections (`gateway.facilitators.http1`, aiohttp's client
protocol): single calls and batches (one HTTP request for many).

Two kinds of failure, kept apart because a broadcast depends on it:
- `RpcError`: the node answered, with an error (a revert, "nonce too low"...).
- `RpcUnavailable`: no answer. `maybe_sent` says whether the request may have reached the
  node (anything after the connection was made): a transaction sent that way may be in the
  pool, so it is never re-signed with another nonce, only watched and re-broadcast.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.facilitators.http1 import JsonPoster, NotSent

MAX_ANSWER = 64 << 20  # a batch of receipts for 500 transactions stays far below this
REVERT_CODE = 3  # geth, anvil, reth: "execution reverted", revert bytes in `data`


class RpcError(Exception):
    """The node answered this call with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data

    @property
    def is_revert(self) -> bool:
        """The call ran and the contract reverted (as opposed to a node problem)."""
        return self.code == REVERT_CODE or "revert" in self.message.lower()

    @property
    def revert_data(self) -> bytes:
        """The revert's ABI bytes (an `Error(string)` or a custom error), if the node sent them."""
        data = self.data
        if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            try:
                return bytes.fromhex(data[2:])
            except ValueError:
                return b""
        return b""


class RpcUnavailable(Exception):
    """The node gave no usable answer (refused, timed out, not JSON, HTTP error)."""

    def __init__(self, detail: str, *, maybe_sent: bool) -> None:
        super().__init__(detail)
        self.maybe_sent = maybe_sent


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    params: tuple[Any, ...] = ()


class RpcClient:
    """One node, one connection pool. `start()` before use, `close()` after."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        batch_limit: int = 100,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._batch_limit = max(1, batch_limit)
        self._poster: JsonPoster | None = None
        self._ids = itertools.count(1)

    async def start(self) -> None:
        if self._poster is None:
            self._poster = JsonPoster(self.url, {}, self._timeout, max_answer=MAX_ANSWER)

    async def close(self) -> None:
        poster, self._poster = self._poster, None
        if poster is not None:
            poster.close()

    async def call(self, method: str, *params: Any) -> Any:
        """One call's result; raises RpcError or RpcUnavailable."""
        request_id = next(self._ids)
        answer = await self._post(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        )
        if not isinstance(answer, dict):
            raise RpcUnavailable(
                f"{method}: the node's answer is not a JSON-RPC object", maybe_sent=True
            )
        return _result(method, answer)

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Every call's result in order; an item that failed is its `RpcError` (returned, not
        raised). Raises RpcUnavailable when the whole request failed."""
        if not calls:
            return []
        chunks = [calls[i : i + self._batch_limit] for i in range(0, len(calls), self._batch_limit)]
        parts = await asyncio.gather(*(self._batch_once(chunk) for chunk in chunks))
        return [item for part in parts for item in part]

    async def _batch_once(self, calls: Sequence[Call]) -> list[Any]:
        ids = [next(self._ids) for _ in calls]
        body = [
            {"jsonrpc": "2.0", "id": i, "method": c.method, "params": list(c.params)}
            for i, c in zip(ids, calls, strict=True)
        ]
        answer = await self._post(body)
        if isinstance(answer, dict):  # the node refused the batch as a whole
            error = answer.get("error") or {}
            raise RpcUnavailable(f"batch refused: {error.get('message', answer)}", maybe_sent=True)
        by_id = {a.get("id"): a for a in answer if isinstance(a, dict)}
        out: list[Any] = []
        for request_id, c in zip(ids, calls, strict=True):
            item = by_id.get(request_id)
            if item is None:
                out.append(RpcError(c.method, -32603, "no answer for this call in the batch"))
                continue
            try:
                out.append(_result(c.method, item))
            except RpcError as exc:
                out.append(exc)
        return out

    async def _post(self, body: Any) -> Any:
        if self._poster is None:
            raise RuntimeError("RpcClient used before start() or after close()")
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            status, raw = await self._poster.post("", data)
        except NotSent as exc:
            raise RpcUnavailable(f"{self.url}: {exc}", maybe_sent=False) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RpcUnavailable(
                f"{self.url}: {exc.__class__.__name__}: {exc}", maybe_sent=True
            ) from exc
        if status != 200:
            raise RpcUnavailable(f"{self.url}: HTTP {status}", maybe_sent=True)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RpcUnavailable(f"{self.url}: the answer is not JSON", maybe_sent=True) from exc


def _result(method: str, answer: dict[str, Any]) -> Any:
    error = answer.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise RpcError(method, -32603, str(error))
        code = error.get("code")
        return_code = code if isinstance(code, int) else -32603
        raise RpcError(method, return_code, str(error.get("message", "")), error.get("data"))
    if "result" not in answer:
        raise RpcError(method, -32603, "answer without a result")
    return answer["result"]


def quantity(value: Any) -> int:
    """A JSON-RPC QUANTITY ("0x1a") as an int; raises ValueError on anything else."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"not a hex quantity: {value!r}")
    return int(value, 16)


def hex_data(data: bytes) -> str:
    return "0x" + data.hex()
