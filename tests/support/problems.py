"""Checks for RFC 9457 problem documents, the shape of every error the gateway makes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}


def assert_problem(
    status: int, headers: Mapping[str, str], body: bytes, expected: int, *, route: str | None = None
) -> dict[str, Any]:
    """Check one problem+json answer from a route and return the decoded document."""
    assert status == expected, body
    assert headers["Content-Type"].split(";")[0].strip() == "application/problem+json"
    document = json.loads(body)
    assert isinstance(document, dict)
    assert set(document) >= PROBLEM_KEYS, document
    assert document["status"] == expected
    assert isinstance(document["type"], str) and document["type"]
    assert isinstance(document["title"], str) and document["title"]
    assert isinstance(document["detail"], str)
    assert document["request_id"] == headers["X-Request-ID"]
    if route is not None:
        assert document["route"] == route
    assert "Traceback" not in body.decode()
    return document


async def read_problem(response: aiohttp.ClientResponse, expected: int) -> dict[str, Any]:
    """Check a problem answer that need not carry a request id (the admin port's)."""
    body = await response.read()
    assert response.status == expected, body
    assert response.headers["Content-Type"] == "application/problem+json"
    document = json.loads(body)
    assert isinstance(document, dict)
    assert document["status"] == expected
    assert document["type"] and document["title"] and document["detail"]
    return document


def assert_no_internal_address(body: bytes, target: str) -> None:
    """Neither the upstream's host:port nor its port alone leaks into what the client sees."""
    host_port = target.split("://", 1)[1]
    port = host_port.rsplit(":", 1)[1]
    document = json.loads(body)
    text = body.decode().replace(str(document.get("request_id", "")), "")  # a random id may hold digits
    assert host_port not in text
    assert port not in text
    assert "127.0.0.1" not in text
