"""The memory store's claim map (gateway/store/expiring.py): each entry's own lifetime, the
bound, and the same answers as cachetools' `TLRUCache` (which it replaced) on any sequence of
writes, reads, deletions and passing time within the bound."""

from __future__ import annotations

from typing import Any

from cachetools import TLRUCache
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.expiring import ExpiringMap


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ttl(value: tuple[str, float]) -> float:
    return value[1]


def make(maxsize: int = 100) -> tuple[ExpiringMap[tuple[str, float]], Clock]:
    clock = Clock()
    return ExpiringMap(maxsize, _ttl, clock), clock


def test_an_entry_lives_its_own_ttl_from_its_last_write() -> None:
    m, clock = make()
    m["a"] = ("one", 10.0)
    m["b"] = ("two", 30.0)
    clock.now += 9.9
    assert m.get("a") == ("one", 10.0)
    clock.now += 0.1  # expires <= now: gone, as TLRUCache
    assert m.get("a") is None
    assert m.get("b") == ("two", 30.0)
    m["b"] = ("three", 5.0)  # written again: its new lifetime from now
    clock.now += 4.0
    assert m.get("b") == ("three", 5.0)
    clock.now += 1.0
    assert m.get("b") is None


def test_an_entry_written_again_outlives_its_first_lifetime() -> None:
    m, clock = make()
    m["a"] = ("one", 10.0)
    clock.now += 5.0
    m["a"] = ("again", 10.0)
    clock.now += 6.0  # past the first lifetime: its heap entry is stale, skipped
    m["other"] = ("x", 1.0)  # a write drops what expired
    assert m.get("a") == ("again", 10.0)
    assert len(m) == 2


def test_expired_entries_are_dropped_by_writes() -> None:
    m, clock = make()
    for k in range(50):
        m[f"k{k}"] = ("v", 1.0)
    clock.now += 2.0
    m["new"] = ("v", 1.0)
    assert len(m) == 1


def test_bounded_the_soonest_to_expire_go_first() -> None:
    m, _ = make(maxsize=3)
    m["long"] = ("v", 100.0)
    m["short"] = ("v", 1.0)
    m["mid"] = ("v", 50.0)
    m["more"] = ("v", 70.0)
    assert len(m) == 3
    assert m.get("short") is None
    assert all(m.get(k) is not None for k in ("long", "mid", "more"))


def test_rewrites_keep_the_heap_bounded() -> None:
    m, _ = make()
    for _ in range(10_000):
        m["same"] = ("v", 60.0)
    assert len(m) == 1
    assert len(m._heap) <= 2 + 64 + 1  # rebuilt from the live entries


def test_a_deleted_entry_is_gone_and_its_heap_entry_harmless() -> None:
    m, clock = make()
    m["a"] = ("one", 10.0)
    del m["a"]
    assert m.get("a") is None
    m["a"] = ("two", 100.0)
    clock.now += 20.0
    m["b"] = ("x", 1.0)  # pops the first write's stale entry: the new one stays
    assert m.get("a") == ("two", 100.0)


_KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _KEYS, st.floats(min_value=0.0, max_value=20.0)),
        st.tuples(st.just("add"), _KEYS, st.floats(min_value=0.0, max_value=20.0)),
        st.tuples(st.just("get"), _KEYS, st.just(0.0)),
        st.tuples(st.just("del"), _KEYS, st.just(0.0)),
        st.tuples(st.just("wait"), st.just(""), st.floats(min_value=0.0, max_value=10.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_answers_as_tlrucache_within_the_bound(ops: list[tuple[str, str, float]]) -> None:
    ours, clock = make(maxsize=100)
    theirs: TLRUCache[str, Any] = TLRUCache(
        maxsize=100, ttu=lambda _k, v, now: now + v[1], timer=clock
    )
    for n, (op, key, number) in enumerate(ops):
        if op == "set":
            ours[key] = theirs[key] = (f"v{n}", number)
        elif op == "add":  # set-if-absent, as the store's claim did on TLRUCache
            held = theirs.get(key)
            if held is None:
                theirs[key] = (f"v{n}", number)
            assert ours.add(key, (f"v{n}", number)) == held
        elif op == "get":
            assert ours.get(key) == theirs.get(key)
        elif op == "del" and theirs.get(key) is not None:
            del ours[key]
            del theirs[key]
        elif op == "wait":
            clock.now += number
    for key in "abcde":
        assert ours.get(key) == theirs.get(key)
