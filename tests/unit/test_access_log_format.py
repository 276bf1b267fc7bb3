"""Access-log lines without a server: credential redaction in the query (property-based),
one line per entry whatever the values hold, and whole-line writes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.access_log import FIELDS, REDACTED, AccessLog, _chunks, json_line, redact_query, text_line
from gateway.config_model import AccessLogConfig

SECRET_NAMES = frozenset({"apikey"})
words = st.text("abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=12)
values = st.text(st.characters(codec="utf-8", exclude_characters="&#"), max_size=20)


def entry(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(f for f in FIELDS if f != "cache")  # only routes that cache have it
    base.update(ts="2026-12-01T00:00:00.000Z", request_id="r1", method="GET", path="/a", status=200,
                duration_ms=1.5, attempts=0, bytes_in=0, bytes_out=0)
    base.update(changes)
    return base


@pytest.mark.parametrize(("query", "logged"), [
    ("page=2&apikey=k1", "page=2&apikey=<redacted>"),
    ("APIKEY=k1", "APIKEY=<redacted>"),
    ("access_token=t&refresh_token=r&q=x", "access_token=<redacted>&refresh_token=<redacted>&q=x"),
    ("X-Amz-Signature=s&x-amz-date=d", "X-Amz-Signature=<redacted>&x-amz-date=d"),
    ("client_secret=s&user=bob", "client_secret=<redacted>&user=bob"),
    ("Password=p&passwd=q", "Password=<redacted>&passwd=q"),
    ("api%4Bey=k&api%5Fkey=k2", "api%4Bey=<redacted>&api%5Fkey=<redacted>"),  # names compared decoded
    ("key", "key=<redacted>"),  # a bare name is replaced too
    ("a=1&&b=2", "a=1&&b=2"),
])
def test_credential_parameters_are_redacted(query: str, logged: str) -> None:
    assert redact_query(query, SECRET_NAMES) == logged


@given(st.lists(st.tuples(words, values), max_size=6), st.sampled_from(
    ["apikey", "token", "Secret", "PASSWORD", "x-signature", "session_key", "api_key"]), values)
def test_no_credential_value_survives(others: list[tuple[str, str]], name: str, secret: str) -> None:
    secret = "S3CR3T" + secret  # a value that cannot hide in the other parameters by accident
    pairs = [*others, (name, secret)]
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in pairs)
    logged = redact_query(query, SECRET_NAMES)
    assert quote(secret, safe="") not in logged
    assert f"{quote(name)}={REDACTED}" in logged.split("&")


@given(st.text(max_size=60), st.text(max_size=60))
def test_every_entry_is_one_line_in_both_formats(path: str, agent: str) -> None:
    item = entry(path=path, user_agent=agent)
    for line in (json_line(item), text_line(item)):
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
    assert json.loads(json_line(item))["user_agent"] == agent


def test_text_line_layout() -> None:
    line = text_line(entry(route="users", upstream="users", upstream_status=200, user_agent="curl/8.5.0"))
    assert line == (b"2026-12-01T00:00:00.000Z r1 GET /a 200 1.5ms trace_id=- route=users source=- "
                    b"upstream=users upstream_status=200 upstream_ms=- attempts=0 bytes_in=0 bytes_out=0 "
                    b"client_ip=- consumer=- user_agent=curl/8.5.0\n")


def test_undecodable_client_bytes_are_escaped_not_lost() -> None:
    line = json_line(entry(user_agent="bad \udcff byte"))
    assert json.loads(line)["user_agent"] == "bad \udcff byte"


def test_chunks_hold_whole_lines_and_respect_the_limit() -> None:
    lines = [f"{n}:".encode() + b"x" * (n % 50) + b"\n" for n in range(500)]
    chunks = list(_chunks(lines, 256))
    assert b"".join(chunks) == b"".join(lines)
    assert all(len(c) <= 256 and c.endswith(b"\n") for c in chunks)
    [alone] = list(_chunks([b"y" * 1000 + b"\n"], 256))  # a longer line goes alone, whole
    assert len(alone) == 1001


async def test_a_stuck_writer_drops_lines_instead_of_growing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.access_log as module

    monkeypatch.setattr(module, "MAX_PENDING", 10_000)
    monkeypatch.setattr(module, "FLUSH_BYTES", 1_000)
    dropped: list[int] = []
    log = AccessLog(AccessLogConfig(path=str(tmp_path / "a.log")), dropped=dropped.append)
    await log.start()
    fd_write = os.write
    released = False

    def slow_write(fd: int, data: Any) -> int:  # a disk that does not move until released
        while not released:
            time.sleep(0.001)
        return fd_write(fd, data)

    monkeypatch.setattr(os, "write", slow_write)
    for n in range(400):
        log.write(entry(path=f"/{n}", user_agent="u" * 50))
        await asyncio.sleep(0)  # the first flush is handed to the (stuck) writer thread
    assert sum(dropped) > 0
    released = True
    await log.close()
    written = (tmp_path / "a.log").read_text().splitlines()
    assert len(written) + sum(dropped) == 400
    assert all(json.loads(line)["path"].startswith("/") for line in written)
