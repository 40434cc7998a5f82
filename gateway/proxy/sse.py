"""Server-sent events, watched as they stream past: the data of the last event of one name.

Fed the body's chunks as they pass (never holding the stream): it keeps only the line being
read and the data of the event being read, each bounded, so a 10,000-event answer costs the
same memory as a 10-event one. Parsing follows the WHATWG event-stream rules that matter
here: lines end in LF, CRLF or CR; `event:` names the event, `data:` lines join with LF; a
blank line dispatches it; a line of more than `max_line` bytes is skipped (it cannot be the
small JSON that states usage).
"""

from __future__ import annotations

import re

_EOL = re.compile(rb"\r\n|\r|\n")
SSE_TYPE = "text/event-stream"
MAX_LINE = 16 * 1024


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == SSE_TYPE


def event(name: str, data: str) -> bytes:
    """One event as the wire carries it (each data line its own `data:` field)."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {name}\n{lines}\n".encode()


class LastEvent:
    """The data of the last complete event named `name` seen so far (`found`)."""

    def __init__(self, name: str, max_line: int = MAX_LINE) -> None:
        self.name = name
        self.found: str | None = None
        self._max = max_line
        self._line = bytearray()
        self._skipping = False  # inside an over-long line: drop it to its end
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._after_cr = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return  # keeps a CR that ended the last chunk waiting for its LF
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks: the line already ended
        pos = 0
        for end in _EOL.finditer(chunk):
            self._take(chunk[pos : end.start()])
            self._end_line()
            pos = end.end()
        self._take(chunk[pos:])
        self._after_cr = chunk.endswith(b"\r")

    def _take(self, part: bytes) -> None:
        if self._skipping or not part:
            return
        if len(self._line) + len(part) > self._max:
            self._skipping = True
            self._line.clear()
            return
        self._line += part

    def _end_line(self) -> None:
        if self._skipping:
            self._skipping = False
            return
        line = self._line.decode("utf-8", "replace")
        self._line.clear()
        if not line:
            self._dispatch()
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data" and self._size + len(value) <= self._max:
            self._data.append(value)
            self._size += len(value)

    def _dispatch(self) -> None:
        if self._event == self.name and self._data:
            self.found = "\n".join(self._data)
        self._event, self._data, self._size = "", [], 0
