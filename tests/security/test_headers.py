"""Headers the gateway owns, in underscore and case variants, from an untrusted peer; and
the client's ``Connection`` header naming headers that matter to the chain."""

from __future__ import annotations

import pytest

from tests.security.recorder import KEY, Front, Recorder, assert_no_private, assert_refused, assert_upstream_clean
from tests.support import plugin_table

# What the upstream gets for the gateway's own headers, whatever the client sent.
GATEWAY_OWN = {
    "x-forwarded-for": ["127.0.0.1"],
    "x-forwarded-proto": ["http"],
    "x-forwarded-host": ["gw.example"],
}

OWNED = [
    pytest.param("X_Consumer", "admin", id="underscore-x-consumer"),
    pytest.param("x-consumer", "admin", id="lower-x-consumer"),
    pytest.param("X-CONSUMER", "admin", id="upper-x-consumer"),
    pytest.param("X-CONSUMER-ID", "1", id="x-consumer-id"),
    pytest.param("X-Consumer-Subject", "x", id="x-consumer-subject"),
    pytest.param("X_Consumer_Subject", "x", id="underscore-x-consumer-subject"),
    pytest.param("X_Forwarded_For", "1.2.3.4", id="underscore-x-forwarded-for"),
    pytest.param("x_forwarded_host", "evil", id="underscore-x-forwarded-host"),
    pytest.param("X-Request_ID", "abc", id="half-underscore-x-request-id"),
    pytest.param("X_Gateway_Attempt", "9", id="underscore-x-gateway-attempt"),
    pytest.param("X-Gateway-Attempt", "9", id="x-gateway-attempt"),
    pytest.param("Forwarded", "for=1.2.3.4", id="forwarded"),
    pytest.param("forwarded", "for=1.2.3.4;host=evil;proto=https", id="lower-forwarded"),
    pytest.param("X-Real-IP", "1.2.3.4", id="x-real-ip"),
    pytest.param("X_Real_IP", "1.2.3.4", id="underscore-x-real-ip"),
    pytest.param("X-Forwarded-Host", "evil", id="x-forwarded-host"),
    pytest.param("X-Forwarded-Proto", "https", id="x-forwarded-proto"),
    pytest.param("X-Forwarded-Prefix", "/admin", id="x-forwarded-prefix"),
    pytest.param("X-Forwarded-Port", "443", id="x-forwarded-port"),
    pytest.param("X-FORWARDED-SERVER", "evil", id="upper-x-forwarded-server"),
    pytest.param("X_Foo", "bar", id="underscore-other"),
]


def _assert_none_of_the_clients(recorder: Recorder, name: str, value: str) -> None:
    assert len(recorder.requests) == 1
    received = recorder.requests[0]
    canonical = name.lower().replace("_", "-")
    values = received.all(canonical)
    assert not [v for v in values if value in v], f"{name}: {value!r} reached the upstream: {received.headers}"
    if canonical in GATEWAY_OWN:
        assert values == GATEWAY_OWN[canonical]
    elif canonical == "x-request-id":
        assert len(values) == 1
    else:
        assert values == []
    assert_upstream_clean(recorder)


@pytest.mark.parametrize(("name", "value"), OWNED)
async def test_owned_header_from_the_client_never_reaches_the_upstream(
    name: str, value: str, front: Front, recorder: Recorder
) -> None:
    response = await front.send("/public/x", headers=[(name, value)])
    assert response.status == 200
    _assert_none_of_the_clients(recorder, name, value)


async def test_all_owned_headers_at_once(front: Front, recorder: Recorder) -> None:
    sent = [(str(p.values[0]), str(p.values[1])) for p in OWNED]
    response = await front.send("/public/x", headers=sent)
    assert response.status == 200
    received = recorder.requests[0]
    for canonical, values in GATEWAY_OWN.items():
        assert received.all(canonical) == values
    assert not received.names & {"x-consumer", "x-consumer-id", "x-consumer-subject", "forwarded", "x-real-ip",
                                 "x-gateway-attempt", "x-forwarded-prefix", "x-forwarded-port",
                                 "x-forwarded-server", "x-foo"}
    assert received.all("X-Request-ID") != ["abc"]
    assert_upstream_clean(recorder)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("X-Consumer", "admin", id="x-consumer"),
        pytest.param("X_Consumer", "admin", id="underscore-x-consumer"),
        pytest.param("X-Consumer-Subject", "root", id="x-consumer-subject"),
    ],
)
async def test_consumer_headers_are_the_gateways_on_the_protected_route(
    name: str, value: str, front: Front, recorder: Recorder
) -> None:
    response = await front.send("/private/x", headers=[(name, value), ("X-API-Key", KEY)])
    assert response.status == 200
    received = recorder.requests[0]
    assert received.all("X-Consumer") == ["alice"]
    assert value not in [v for _, v in received.headers]
    assert_upstream_clean(recorder)


@pytest.mark.parametrize(
    "name",
    [pytest.param("X_API_Key", id="underscores"), pytest.param("X-API_Key", id="one-underscore")],
)
async def test_key_under_an_underscore_name_does_not_count(
    name: str, front: Front, recorder: Recorder
) -> None:
    response = await front.send("/private/x", headers=[(name, KEY)])
    assert_refused(response, 401)
    assert recorder.requests == []


async def test_underscores_reject(front: Front, recorder: Recorder) -> None:
    await front.start(gateway='underscores_in_headers = "reject"')
    response = await front.send("/public/x", headers=[("X_Foo", "bar")])
    assert_refused(response, 400)
    assert recorder.requests == []
    response = await front.send("/public/x", headers=[("X-Foo", "bar")])
    assert response.status == 200
    assert recorder.requests[0].all("X-Foo") == ["bar"]


async def test_underscores_allow(front: Front, recorder: Recorder) -> None:
    await front.start(gateway='underscores_in_headers = "allow"')
    response = await front.send("/public/x", headers=[("X_Foo", "bar")])
    assert response.status == 200
    assert [(k, v) for k, v in recorder.requests[0].headers if k.lower() == "x_foo"] == [("X_Foo", "bar")]
    assert_upstream_clean(recorder, underscores_allowed=True)


# --- Connection naming headers ------------------------------------------------------------

SET_BY_PLUGIN = plugin_table("headers", request='{ set = { "X-Set-By-Plugin" = "1" } }')


# The last two cases of each test below send the Connection header as two lines, the first
# naming only "keep-alive"/"close": every line counts, not just the first.
@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(["X-Api-Key"], id="named"),
        pytest.param(["keep-alive, x-api-key"], id="named-lower-with-keep-alive"),
        pytest.param(["close,X-API-KEY"], id="named-upper-with-close"),
        pytest.param(["X-Foo", "X-API-Key"], id="two-lines"),
        pytest.param(["keep-alive", "X-API-Key"], id="two-lines-first-keep-alive"),
        pytest.param(["close", "X-API-Key"], id="two-lines-first-close"),
    ],
)
async def test_connection_naming_the_key_removes_it_before_auth(
    lines: list[str], front: Front, recorder: Recorder
) -> None:
    headers = [("Connection", lines[0]), ("X-API-Key", KEY), *[("Connection", line) for line in lines[1:]]]
    response = await front.send("/private/x", headers=headers)
    assert_refused(response, 401)
    assert recorder.requests == []
    assert_no_private(recorder)


@pytest.mark.parametrize(
    ("lines", "extra"),
    [
        pytest.param(["X-Set-By-Plugin"], [], id="named-only"),
        pytest.param(["X-Set-By-Plugin"], [("X-Set-By-Plugin", "evil")], id="named-and-sent"),
        pytest.param(["keep-alive, X-Set-By-Plugin"], [("X-Set-By-Plugin", "evil")], id="named-with-keep-alive"),
        pytest.param(["keep-alive", "X-Set-By-Plugin"], [], id="two-lines-first-keep-alive"),
        pytest.param(["close", "X-Set-By-Plugin"], [("X-Set-By-Plugin", "evil")], id="two-lines-first-close"),
    ],
)
async def test_header_set_by_a_plugin_survives_connection_naming_it(
    lines: list[str], extra: list[tuple[str, str]], front: Front, recorder: Recorder
) -> None:
    await front.start(private_plugins=SET_BY_PLUGIN)
    headers = [("X-API-Key", KEY), *[("Connection", line) for line in lines], *extra]
    response = await front.send("/private/x", headers=headers)
    assert response.status == 200
    received = recorder.requests[0]
    assert received.all("X-Set-By-Plugin") == ["1"]
    assert "x-set-by-plugin" not in ",".join(received.all("Connection")).lower()
    assert_upstream_clean(recorder)
