"""The edge's header and Host rules (gateway.hygiene), without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.errors import BadRequest
from gateway.hygiene import check_host, clean_headers, split_host


def cleaned(pairs: list[tuple[str, str]], *, underscores: str = "drop", trusted: bool = False) -> list[tuple[str, str]]:
    out = clean_headers(CIMultiDict(pairs), underscores=underscores, peer_trusted=trusted)  # type: ignore[arg-type]
    return list(out.items())


def test_underscore_names_are_dropped_by_default() -> None:
    assert cleaned([("X_Consumer", "admin"), ("X_Forwarded_For", "1.2.3.4"), ("Accept", "*/*")]) == [("Accept", "*/*")]


def test_underscore_names_can_be_refused_or_allowed() -> None:
    with pytest.raises(BadRequest, match="'_'"):
        cleaned([("X_Tenant", "a")], underscores="reject")
    assert cleaned([("X_Tenant", "a")], underscores="allow") == [("X_Tenant", "a")]


def test_every_x_consumer_header_is_removed_in_any_case() -> None:
    pairs = [("X-Consumer", "a"), ("x-consumer-id", "1"), ("X-CONSUMER-SUBJECT", "s"), ("X-Consumers", "b")]
    assert cleaned([*pairs, ("Accept", "1")]) == [("Accept", "1")]


def test_forwarding_headers_from_untrusted_peers_are_removed() -> None:
    pairs = [("Forwarded", "for=1.2.3.4"), ("X-Real-IP", "1.2.3.4"), ("X-Forwarded-Host", "evil"),
             ("X-Forwarded-Proto", "https"), ("X-Forwarded-Prefix", "/admin"), ("X-Forwarded-For", "1.2.3.4")]
    assert cleaned(pairs) == [("X-Forwarded-For", "1.2.3.4")]
    assert cleaned(pairs, trusted=True) == pairs


def test_headers_named_by_connection_are_removed_before_the_chain() -> None:
    pairs = [("Connection", "keep-alive, X-Api-Key, x-trace"), ("X-Api-Key", "k"), ("X-Trace", "1"), ("Accept", "*")]
    assert cleaned(pairs) == [("Connection", "keep-alive"), ("Accept", "*")]


def test_connection_keeps_the_upgrade_handshake_and_framing() -> None:
    pairs = [("Connection", "Upgrade, Content-Length, Host"), ("Upgrade", "websocket"), ("Content-Length", "3")]
    assert cleaned(pairs) == [("Connection", "upgrade"), ("Upgrade", "websocket"), ("Content-Length", "3")]


def test_a_connection_header_naming_only_other_headers_disappears() -> None:
    assert cleaned([("Connection", "X-A"), ("X-A", "1"), ("X-B", "2")]) == [("X-B", "2")]


@pytest.mark.parametrize(
    "host",
    ["example.com", "example.com:8080", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:8080", "my_service:9",
     "a-b.c~d", "localhost:", "[fe80::1%25eth0]:80", None],
)
def test_valid_hosts_pass(host: str | None) -> None:
    check_host(host)


@pytest.mark.parametrize(
    "host",
    ["", "evil/../private", "a b", "a@b", "example.com:99999", "example.com:8x", "..", ".example.com", "a..b",
     "[::1", "::1", "h:1:2", "a\\b", "a%2Fb", "a,b", "x?y", "x#y"],
)
def test_invalid_hosts_are_refused(host: str) -> None:
    with pytest.raises(BadRequest, match="Host"):
        check_host(host)


HEADER_NAME = st.text(alphabet=st.sampled_from(list("xXcC-_onsumerfwd")), min_size=1, max_size=16)


@given(st.lists(st.tuples(HEADER_NAME, st.text(alphabet="abc ,_-", max_size=8)), max_size=8))
def test_no_owned_or_underscore_header_ever_survives(pairs: list[tuple[str, str]]) -> None:
    for name, _ in cleaned(pairs):
        assert "_" not in name
        assert not name.lower().startswith("x-consumer")
        assert not name.lower().startswith("x-forwarded-") or name.lower() == "x-forwarded-for"


@given(st.text(st.characters(codec="latin-1"), max_size=40) | st.from_regex(r"[a-z0-9.\[\]:]{1,20}", fullmatch=True))
def test_the_edge_check_and_the_admin_parser_agree_on_what_a_host_is(host: str) -> None:
    try:
        check_host(host)
        accepted = True
    except BadRequest:
        accepted = False
    assert accepted == (split_host(host) is not None)
