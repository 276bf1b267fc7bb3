"""The response cache's storage: the Entry record format and the in-process LRU store
(bounds, eviction order, expiry, variants, purge). The Redis store runs against a real
redis-server in tests/integration/cache."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.entry import ENTRY_OVERHEAD, Entry
from gateway.cache.redis_store import variants
from gateway.cache.store import LocalStore
from tests.support.cache import entry, purges_by_path_and_by_route


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- Entry ----------------------------------------------------------------------------------


def test_size_counts_body_header_and_vary_text_plus_overhead() -> None:
    e = Entry(200, [("ab", "cde")], b"x" * 100, 0.0, vary=("accept",), vary_values=("gzip",))
    assert e.size == ENTRY_OVERHEAD + 100 + 5 + 6 + 4


def test_age_and_freshness_follow_rfc9111_arithmetic() -> None:
    e = Entry(200, [], b"", response_time=1000.0, initial_age=5.0, freshness=60.0,
              stale_if_error=30.0, stale_while_revalidate=10.0)
    assert e.age(1010.0) == 15.0
    assert e.age(990.0) == 5.0  # a clock behind the response time adds no negative age
    assert e.fresh_for(1010.0) == 45.0
    assert e.fresh_for(1070.0) == -15.0
    assert e.keep_for(1070.0) == 15.0  # stale by 15 s, stale-if-error allows 30


def test_signature_names_the_variant_whatever_the_case_and_order_of_names() -> None:
    a = entry(vary=("Accept-Encoding", "accept-language"), values=("gzip", "en"))
    b = entry(b"other", vary=("accept-language", "ACCEPT-ENCODING"), values=("en", "gzip"))
    assert a.signature == b.signature
    assert entry(vary=("accept-encoding",), values=("br",)).signature != a.signature
    # an absent request header is another variant than an empty one
    assert entry(vary=("accept",), values=(None,)).signature != entry(vary=("accept",), values=("",)).signature


texts = st.text(st.characters(codec="utf-8") | st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
                max_size=20)
times = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    vary = tuple(draw(st.lists(texts, max_size=4)))
    values = tuple(draw(st.lists(st.none() | texts, min_size=len(vary), max_size=len(vary))))
    return Entry(draw(st.integers(100, 999)), draw(st.lists(st.tuples(texts, texts), max_size=8)),
                 draw(st.binary(max_size=300)), draw(times), draw(times), draw(times), draw(times), draw(times),
                 vary, values)


@given(entries())
def test_a_record_decodes_to_the_entry_it_was_encoded_from(e: Entry) -> None:
    record = e.encode()
    assert Entry.decode(record) == e
    assert Entry.decode(memoryview(b"xx" + record)[2:]) == e


@given(entries(), st.data())
def test_a_truncated_record_is_no_entry(e: Entry, data: st.DataObject) -> None:
    record = e.encode()
    cut = data.draw(st.integers(0, len(record) - 1))
    assert Entry.decode(record[:cut]) is None
    assert Entry.decode(record + b"\0") is None


@given(entries(), st.data())
def test_a_garbled_byte_anywhere_makes_the_record_no_entry(e: Entry, data: st.DataObject) -> None:
    record = bytearray(e.encode())
    index = data.draw(st.integers(0, len(record) - 1))
    record[index] ^= data.draw(st.integers(1, 255))
    assert Entry.decode(bytes(record)) is None


@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: b"GWc\x01" + b))
def test_arbitrary_bytes_are_no_entry_and_never_raise(data: bytes) -> None:
    assert Entry.decode(data) is None


def test_a_record_with_a_valid_checksum_but_inconsistent_lengths_is_no_entry() -> None:
    record = entry().encode()
    # a body length that claims one byte more than the record holds, checksum recomputed
    fixed = bytearray(record[8:])
    struct.pack_into("!I", fixed, 46, len(b"hello") + 1)
    forged = record[:4] + struct.pack("!I", zlib.crc32(bytes(fixed))) + bytes(fixed)
    assert Entry.decode(forged) is None


def test_absent_values_are_refused_outside_vary_values() -> None:
    # an empty header name marked absent: every length still adds up, only the marker is wrong
    record = bytearray(Entry(200, [("", "v")], b"", 0.0).encode()[8:])
    struct.pack_into("!I", record, 50, 0xFFFFFFFF)
    forged = b"GWc\x01" + struct.pack("!I", zlib.crc32(bytes(record))) + bytes(record)
    assert Entry.decode(forged) is None


@pytest.mark.parametrize("bad", [
    Entry(42, [], b"", 0.0),
    Entry(200, [], b"", 0.0, vary=("accept",)),
])
def test_an_entry_that_cannot_be_a_record_is_refused_when_encoding(bad: Entry) -> None:
    with pytest.raises(ValueError):
        bad.encode()


def test_variants_reads_live_intact_records_from_an_entry_hash() -> None:
    live, stale, garbled = entry(b"live"), entry(b"stale", ("a",), ("1",)), entry(b"bad", ("a",), ("2",))
    fields = {
        live.signature: live.encode(),
        stale.signature: stale.encode(),
        garbled.signature: garbled.encode()[:-1],
        b"o": stale.signature + b"00000000001000" + live.signature + b"00000000003000"
              + garbled.signature + b"00000000003000" + b"x" * 16 + b"junk-not-digit",
    }
    assert variants(fields, 2.0) == [live]
    assert variants({**fields, b"o": b"truncated"}, 2.0) == []
    assert variants({}, 2.0) == []


# -- LocalStore -----------------------------------------------------------------------------


async def test_a_stored_entry_is_found_under_its_key() -> None:
    store = LocalStore()
    e = entry()
    assert await store.put("k", e, 10, route="r", path="/p")
    assert await store.get("k") == [e]
    assert await store.get("other") == []


async def test_max_entries_evicts_the_least_recently_used() -> None:
    store = LocalStore(max_entries=3)
    for key in "abc":
        await store.put(key, entry(key.encode()), 10, route="r", path="/" + key)
    await store.get("a")  # a is now hotter than b and c
    await store.put("d", entry(b"d"), 10, route="r", path="/d")
    assert [key for key in "abcd" if await store.get(key)] == ["a", "c", "d"]
    await store.put("e", entry(b"e"), 10, route="r", path="/e")
    assert await store.get("a") == [], "the lookups above made a the coldest"
    assert await store.get("c") != []
    assert len(store) == 3


async def test_max_bytes_bounds_the_total_size() -> None:
    size = entry(b"x" * 1000).size
    store = LocalStore(max_bytes=3 * size + 10)
    for key in "abcd":
        await store.put(key, entry(b"x" * 1000), 10, route="r", path="/")
    assert await store.get("a") == []
    assert all([await store.get(key) for key in "bcd"])
    assert store.bytes == 3 * size
    await store.put("big", entry(b"x" * (2 * 1000 + 200)), 10, route="r", path="/")
    assert store.bytes <= store.max_bytes
    assert [key for key in "bcd" if await store.get(key)] == ["d"]


async def test_an_entry_above_max_object_bytes_is_never_stored_and_evicts_nothing() -> None:
    store = LocalStore(max_object_bytes=entry(b"x" * 100).size)
    await store.put("small", entry(b"x" * 100), 10, route="r", path="/")
    assert not await store.put("big", entry(b"x" * 101), 10, route="r", path="/")
    assert await store.get("big") == []
    assert len(await store.get("small")) == 1


async def test_no_positive_ttl_means_not_stored() -> None:
    store = LocalStore()
    assert not await store.put("k", entry(), 0, route="r", path="/")
    assert not await store.put("k", entry(), -1, route="r", path="/")
    assert await store.get("k") == []


async def test_an_entry_past_its_ttl_is_gone() -> None:
    clock = Clock()
    store = LocalStore(clock=clock)
    await store.put("k", entry(), 10, route="r", path="/")
    clock.now += 9.999
    assert len(await store.get("k")) == 1
    clock.now += 0.001
    assert await store.get("k") == []
    assert len(store) == 0
    assert store.bytes == 0
    assert await store.purge("r") == 0


async def test_puts_drop_expired_entries_nobody_asks_for() -> None:
    clock = Clock()
    store = LocalStore(clock=clock)
    for key in "abc":
        await store.put(key, entry(), 1, route="r", path="/")
    clock.now += 5
    await store.put("d", entry(), 10, route="r", path="/")
    await store.put("e", entry(), 10, route="r", path="/")
    assert len(store) == 2
    assert store.bytes == 2 * entry().size


async def test_every_variant_is_returned_and_equal_vary_values_replace_one() -> None:
    store = LocalStore()
    gzip, br = entry(b"gz", ("accept-encoding",), ("gzip",)), entry(b"br", ("accept-encoding",), ("br",))
    await store.put("k", gzip, 10, route="r", path="/")
    await store.put("k", br, 10, route="r", path="/")
    assert await store.get("k") == [gzip, br]
    newer = entry(b"gz2", ("Accept-Encoding",), ("gzip",))
    await store.put("k", newer, 10, route="r", path="/")
    assert await store.get("k") == [br, newer]
    assert len(store) == 2
    assert store.bytes == br.size + newer.size


async def test_variants_per_key_are_bounded_and_the_oldest_goes() -> None:
    store = LocalStore(max_variants=8)
    stored = [entry(str(i).encode(), ("accept-language",), (str(i),)) for i in range(9)]
    for e in stored:
        await store.put("k", e, 10, route="r", path="/")
    assert await store.get("k") == stored[1:]
    assert len(store) == 8


async def test_variants_expire_one_by_one() -> None:
    clock = Clock()
    store = LocalStore(clock=clock)
    short, long = entry(b"s", ("a",), ("1",)), entry(b"l", ("a",), ("2",))
    await store.put("k", short, 1, route="r", path="/")
    await store.put("k", long, 10, route="r", path="/")
    clock.now += 2
    assert await store.get("k") == [long]


async def test_delete_drops_every_variant_of_a_key() -> None:
    store = LocalStore()
    await store.put("k", entry(b"1", ("a",), ("1",)), 10, route="r", path="/")
    await store.put("k", entry(b"2", ("a",), ("2",)), 10, route="r", path="/")
    await store.put("other", entry(), 10, route="r", path="/")
    await store.delete("k")
    await store.delete("never-stored")
    assert await store.get("k") == []
    assert len(store) == 1
    assert await store.purge("r", "/") == 1


async def test_purge_drops_a_path_of_a_route_or_the_whole_route() -> None:
    store = LocalStore()
    await purges_by_path_and_by_route(store)
    assert await store.purge("unknown") == 0
    assert len(store) == 1


async def test_a_key_stored_again_for_another_route_moves_to_that_route() -> None:
    store = LocalStore()
    await store.put("k", entry(b"old"), 10, route="a", path="/x")
    await store.put("k", entry(b"new"), 10, route="b", path="/y")
    assert await store.purge("a") == 0
    assert await store.purge("b", "/y") == 1


def test_bounds_must_allow_at_least_one_entry() -> None:
    with pytest.raises(ValueError):
        LocalStore(max_entries=0)


operations = st.lists(st.tuples(
    st.sampled_from(["put", "get", "delete", "purge", "tick"]),
    st.sampled_from(["k1", "k2", "k3", "k4", "k5"]),
    st.integers(0, 3),  # variant
    st.integers(0, 600),  # body size
    st.sampled_from(["/a", "/b"]),
), max_size=60)


@given(operations)
async def test_any_sequence_of_operations_keeps_the_bounds_and_the_byte_count(
        ops: list[tuple[str, str, int, int, str]]) -> None:
    clock = Clock()
    store = LocalStore(max_entries=6, max_bytes=6 * ENTRY_OVERHEAD + 1500, max_variants=3, clock=clock)
    for op, key, variant, size, path in ops:
        if op == "put":
            e = entry(b"x" * size, ("v",), (str(variant),))
            stored = await store.put(key, e, 1 + variant, route="r", path=path)
            assert stored == (e.size <= store.max_object_bytes)
            if stored:
                assert e in await store.get(key)
        elif op == "get":
            found = await store.get(key)
            assert len(found) <= 3
            assert len({e.signature for e in found}) == len(found)
        elif op == "delete":
            await store.delete(key)
            assert await store.get(key) == []
        elif op == "purge":
            await store.purge("r", path)
        else:
            clock.now += 1
        assert len(store) <= 6
        assert store.bytes <= store.max_bytes
        live = list(store._lru.values())
        assert store.bytes == sum(slot.size for slot in live)
        assert sum(len(s.variants) for s in store._keys.values()) == len(live)
