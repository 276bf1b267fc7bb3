"""Path normalization at the edge (docs/security.md): the one step that turns a client's
request-target into the path routes match, plugins see and upstreams receive.

RFC 3986 §6.2.2 and §5.2.4, made stricter where an upstream could read a path differently
than the router did:

- percent-escapes of unreserved characters are decoded (``%2e`` is ``.``, ``%41`` is ``A``),
  other escapes keep their meaning with hex upper-cased; characters a path may not carry
  raw (space, ``"``, ``<``, non-ASCII...) are percent-encoded;
- runs of ``/`` are merged (``merge_slashes``), then ``.`` and ``..`` segments are removed;
  a ``..`` that would climb above ``/`` is refused, not dropped;
- ``%2F``, ``%5C``, a raw ``\\``, ``%00``, control characters, malformed escapes, a ``#``
  and a segment such as ``..;x`` or ``..%3Bx`` (a dot segment to servlet containers) are
  refused;
  with ``keep_encoded_slashes`` the encoded slashes stay encoded and never separate segments.

Pure functions of strings; ``PathRefused`` carries the reason for a 400.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from yarl import URL

UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What a segment may carry unencoded (RFC 3986 pchar without pct-encoded).
_PCHAR = UNRESERVED | frozenset("!$&'()*+,;=:@")
# An already-normal path (the common case) is told by one match and two substring tests.
_ORDINARY = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*").fullmatch
_HEX = frozenset("0123456789abcdefABCDEF")
# Where a segment's parameters start, literal or encoded ("..;x" and "..%3Bx" alike).
_PARAMS = re.compile(";|%3B")
_ABSOLUTE_FORM = re.compile(r"(?i)https?://([^/?#]*)")


class PathRefused(ValueError):
    """The request-target cannot be made into a safe path (answered 400)."""


def split_target(target: str) -> tuple[str, str, str | None]:
    """Path, query and authority of a request-target, still percent-encoded.

    An absolute-form target (``http://host:80/p?q``) gives its path and query (origin-form)
    and its authority (which replaces the Host header, RFC 9112 §3.2.2); an origin-form one
    gives no authority. A target with a ``#fragment`` is refused (RFC 9112 §3.2 allows none).
    """
    if "#" in target:
        raise PathRefused("the request target must not carry a #fragment")
    authority = None
    if not target.startswith("/"):
        match = _ABSOLUTE_FORM.match(target)
        if match is None:
            raise PathRefused("the request target must be an absolute path such as /items")
        authority = match.group(1)
        target = target[match.end():]
        if not target.startswith("/"):
            target = "/" + target
    path, _, query = target.partition("?")
    return path, query, authority


def normalize_path(path: str, *, merge_slashes: bool = True, keep_encoded_slashes: bool = False) -> str:
    """The normal form of a percent-encoded absolute path; raises PathRefused."""
    if _ORDINARY(path) is not None and "//" not in path and "/." not in path:
        return path
    if path[:1] != "/":
        raise PathRefused("the request target must be an absolute path such as /items")
    segments = [_segment(raw, keep_encoded_slashes) for raw in path[1:].split("/")]
    if merge_slashes:
        last = segments[-1]
        segments = [s for s in segments[:-1] if s]
        segments.append(last)
    out: list[str] = []
    final = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == ".":
            if index == final:
                out.append("")
        elif segment == "..":
            if not out:
                raise PathRefused("the path climbs above the root with '..'")
            out.pop()
            if index == final:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _segment(raw: str, keep_encoded_slashes: bool) -> str:
    """One segment in normal form (escapes decoded or upper-cased, unsafe bytes refused)."""
    out = raw if "%" not in raw and all(c in _PCHAR for c in raw) else _rebuild(raw, keep_encoded_slashes)
    head = _PARAMS.split(out, 1)[0]
    if head in (".", "..") and head != out:
        raise PathRefused(f"the path segment {out!r} is a dot segment with parameters")
    if keep_encoded_slashes and ("%2F" in out or "%5C" in out):
        for piece in re.split("%2F|%5C", out):
            if _PARAMS.split(piece, 1)[0] in (".", ".."):
                raise PathRefused("the path has a dot segment between encoded slashes")
    return out


def _rebuild(raw: str, keep_encoded_slashes: bool) -> str:
    out: list[str] = []
    index = 0
    length = len(raw)
    while index < length:
        char = raw[index]
        if char == "%":
            digits = raw[index + 1:index + 3]
            if len(digits) != 2 or not (digits[0] in _HEX and digits[1] in _HEX):
                raise PathRefused("the path has a malformed percent-escape")
            code = int(digits, 16)
            decoded = chr(code)
            if decoded in UNRESERVED:
                out.append(decoded)
            elif code < 0x20 or code == 0x7F:
                raise PathRefused("the path has an encoded control character (such as %00)")
            elif decoded in "/\\" and not keep_encoded_slashes:
                raise PathRefused("the path has an encoded slash (%2F or %5C)")
            else:
                out.append("%" + digits.upper())
            index += 3
            continue
        if char in _PCHAR:
            out.append(char)
        elif char == "\\":
            raise PathRefused("the path has a backslash")
        elif char < " " or char == "\x7f":
            raise PathRefused("the path has a control character")
        else:  # a character a path may not carry raw: encode its UTF-8 bytes
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
        index += 1
    return "".join(out)


def routing_form(path: str) -> str:
    """The normalized path as the route table reads it: decoded, but ``%2F`` and ``%25``
    kept encoded so they never act as a separator or start a new escape."""
    return path if "%" not in path else URL.build(path=path, encoded=True).path_safe


def has_dot_segment(value: str) -> bool:
    """Tell whether ``value`` would put a ``.`` or ``..`` segment into a path anywhere it
    is decoded: split on ``/`` and ``\\`` after decoding percent-escapes (again and again,
    so double encoding counts), with ``;parameters`` ignored (``..;`` is ``..``)."""
    for _ in range(4):
        if _has_dot_piece(value):
            return True
        decoded = unquote(value, errors="surrogateescape")
        if decoded == value:
            return False
        value = decoded
    return _has_dot_piece(value)


def _has_dot_piece(value: str) -> bool:
    if "." not in value:
        return False
    return any(piece.partition(";")[0] in (".", "..") for piece in re.split(r"[/\\]", value))
