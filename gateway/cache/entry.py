"""One stored answer of the response cache (docs/caching.md): what was received, the times
RFC 9111 needs to tell its age and freshness, and the Vary variant it answers.

Times are wall-clock seconds so that every process sharing a store agrees on them:

    response_time   when the response arrived (``time.time()``)
    initial_age     the corrected initial age (RFC 9111 §4.2.3): max(apparent age,
                    Age header + response delay), fixed when the response is stored
    freshness       the freshness lifetime (§4.2.1), in seconds
    current age     initial_age + (now - response_time)           → ``age(now)``
    fresh           age < freshness                                → ``fresh_for(now) > 0``

The record format (``encode``/``decode``, version 1, big-endian): a fixed 58-byte head, one
u32 length per string, the strings (UTF-8 with surrogateescape, so any header an upstream
sent comes back exactly), then the raw body. The CRC-32 covers everything after itself, so
a truncated, garbled or foreign record decodes to None — a miss, never an exception.

    magic "GWc\\x01" | crc32 | status u16 | response_time, initial_age, freshness,
    stale_if_error, stale_while_revalidate f64 | n_headers u16 | n_vary u16 | body_len u32 |
    lengths u32 (2 per header, 2 per Vary name), 0xFFFFFFFF = an absent request header |
    header names and values, Vary names and values | body
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from typing import cast

__all__ = ["ENTRY_OVERHEAD", "Entry"]

# The objects around a stored entry (dataclass, lists, tuples, store bookkeeping), counted in
# ``size`` so that many tiny entries cannot hide from a byte bound.
ENTRY_OVERHEAD = 256

_PREFIX = struct.Struct("!4sI")  # magic, crc32 of the rest
_FIXED = struct.Struct("!H5dHHI")  # status, five times, n_headers, n_vary, body_len
_HEAD_SIZE = _PREFIX.size + _FIXED.size
_MAGIC = b"GWc\x01"
_ABSENT = 0xFFFFFFFF
_MAX_COUNT = 0xFFFF
_MAX_BODY = 0xFFFFFFFF


@dataclass(slots=True)
class Entry:
    """A stored response: status, headers as stored, body, RFC 9111 times and its variant."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    response_time: float
    initial_age: float = 0.0
    freshness: float = 0.0
    stale_if_error: float = 0.0
    stale_while_revalidate: float = 0.0
    vary: tuple[str, ...] = ()
    """The header names the response's Vary listed (lower-case)."""
    vary_values: tuple[str | None, ...] = ()
    """The request's value for each name in ``vary``; None when the request did not send it."""

    @property
    def size(self) -> int:
        """Bytes this entry takes, about: body, header and Vary text, and a fixed overhead."""
        text = sum(len(name) + len(value) for name, value in self.headers)
        text += sum(len(name) for name in self.vary) + sum(len(value or "") for value in self.vary_values)
        return ENTRY_OVERHEAD + len(self.body) + text

    @property
    def signature(self) -> bytes:
        """16 bytes naming the variant: the same for equal Vary names (any case, any order) and
        request values. A store keeps one entry per signature under a key."""
        pairs = sorted(zip((name.lower() for name in self.vary), self.vary_values, strict=False),
                       key=lambda pair: pair[0])
        return hashlib.blake2b(repr(pairs).encode(), digest_size=16).digest()

    def age(self, now: float) -> float:
        """The current age in seconds at wall-clock ``now`` (RFC 9111 §4.2.3)."""
        return self.initial_age + max(0.0, now - self.response_time)

    def fresh_for(self, now: float) -> float:
        """Seconds this entry stays fresh at ``now``; zero or less once it is stale (by that much)."""
        return self.freshness - self.age(now)

    def keep_for(self, now: float) -> float:
        """Seconds it is of any use at ``now``: fresh, then within its stale-if-error or
        stale-while-revalidate window. A store TTL for callers that keep nothing longer."""
        return self.fresh_for(now) + max(self.stale_if_error, self.stale_while_revalidate)

    # -- serialization ----------------------------------------------------------------------

    def encode(self) -> bytes:
        """The compact record (see the module docstring); ValueError when it cannot be one
        (more than 65535 headers, a body of 4 GiB or more, a status outside 100-999,
        mismatched Vary names and values)."""
        if len(self.vary) != len(self.vary_values):
            raise ValueError("vary and vary_values differ in length")
        if len(self.headers) > _MAX_COUNT or len(self.vary) > _MAX_COUNT or len(self.body) > _MAX_BODY:
            raise ValueError("entry too large to encode")
        if not 100 <= self.status <= 999:
            raise ValueError(f"status {self.status} is not an HTTP status")
        strings: list[bytes] = []
        for name, value in self.headers:
            strings.append(name.encode("utf-8", "surrogateescape"))
            strings.append(value.encode("utf-8", "surrogateescape"))
        strings.extend(name.encode("utf-8", "surrogateescape") for name in self.vary)
        lengths = [len(s) for s in strings]
        for sent in self.vary_values:
            if sent is None:
                lengths.append(_ABSENT)
            else:
                encoded = sent.encode("utf-8", "surrogateescape")
                strings.append(encoded)
                lengths.append(len(encoded))
        meta = b"".join([
            _FIXED.pack(self.status, self.response_time, self.initial_age, self.freshness, self.stale_if_error,
                        self.stale_while_revalidate, len(self.headers), len(self.vary), len(self.body)),
            struct.pack(f"!{len(lengths)}I", *lengths), *strings,
        ])
        crc = zlib.crc32(self.body, zlib.crc32(meta))
        return b"".join([_PREFIX.pack(_MAGIC, crc), meta, self.body])  # the body is copied once

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Entry | None:
        """The entry in ``data``, or None when it is not a whole, intact record of this format."""
        try:
            return _decode(memoryview(data))
        except (ValueError, struct.error, OverflowError, UnicodeError):
            return None


def _decode(view: memoryview) -> Entry | None:
    if len(view) < _HEAD_SIZE:
        return None
    magic, crc = _PREFIX.unpack_from(view)
    if magic != _MAGIC or zlib.crc32(view[_PREFIX.size:]) != crc:
        return None
    (status, response_time, initial_age, freshness, stale_if_error, stale_while_revalidate,
     n_headers, n_vary, body_len) = _FIXED.unpack_from(view, _PREFIX.size)
    durations = (initial_age, freshness, stale_if_error, stale_while_revalidate)
    if not 100 <= status <= 999 or not math.isfinite(response_time + sum(durations)) or min(durations) < 0:
        return None
    count = 2 * n_headers + 2 * n_vary
    lengths = struct.unpack_from(f"!{count}I", view, _HEAD_SIZE)
    named = count - n_vary  # header names and values, Vary names: never absent
    absent = lengths.count(_ABSENT)
    if absent and _ABSENT in lengths[:named]:
        return None
    start = _HEAD_SIZE + 4 * count
    end = start + sum(lengths) - absent * _ABSENT
    if end + body_len != len(view):
        return None
    strings = bytes(view[start:end])
    # One decode for the usual all-ASCII strings (byte offsets are then character offsets).
    source: str | bytes = strings.decode("ascii") if strings.isascii() else strings
    texts: list[str | None] = []
    offset = 0
    for length in lengths:
        if length == _ABSENT:
            texts.append(None)
            continue
        piece = source[offset:offset + length]
        texts.append(piece if isinstance(piece, str) else piece.decode("utf-8", "surrogateescape"))
        offset += length
    words = cast("list[str]", texts[:named])
    headers = list(zip(words[0:2 * n_headers:2], words[1:2 * n_headers:2], strict=True))
    return Entry(status, headers, bytes(view[end:]), response_time, initial_age, freshness,
                 stale_if_error, stale_while_revalidate, tuple(words[2 * n_headers:]), tuple(texts[named:]))
