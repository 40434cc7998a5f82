"""gateway.proxy.sse: the last event of one name, read from chunks as they stream past."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.sse import LastEvent, event, is_event_stream

STREAM = (
    b": comment\n\nevent: token\ndata: hello\n\n"
    b'event: usage\ndata: {"amount": "1"}\n\n'
    b"data: no name\n\n"
    b'data: {"amount":\r\ndata:  "12300"}\r\nevent: usage\r\n\r\n'
    b"event: token\ndata: bye\n\n"
)


def test_the_last_named_event_wins_with_its_data_lines_joined() -> None:
    watch = LastEvent("usage")
    watch.feed(STREAM)
    assert watch.found == '{"amount":\n "12300"}'


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking_reads_the_same(cuts: list[int]) -> None:
    watch = LastEvent("usage")
    points = [0, *sorted(cuts), len(STREAM)]
    for a, b in itertools.pairwise(points):
        watch.feed(STREAM[a:b])
    assert watch.found == '{"amount":\n "12300"}'


def test_an_event_without_its_blank_line_is_not_dispatched_and_long_lines_are_skipped() -> None:
    watch = LastEvent("usage", max_line=64)
    watch.feed(b'event: usage\ndata: {"amount": "5"}\n')
    assert watch.found is None
    watch.feed(b"\nevent: usage\ndata: " + b"9" * 500 + b"\n\n")
    assert watch.found == '{"amount": "5"}'


def test_event_encoding_and_content_type() -> None:
    assert event("payment-response", "a\nb") == b"event: payment-response\ndata: a\ndata: b\n\n"
    assert is_event_stream("text/event-stream; charset=utf-8")
    assert not is_event_stream("application/json")
