"""Client data rendered into what is sent upstream: a proxy route's ``rewrite`` and an
orchestrated route's step templates (path, query part, headers, body) may never make a
``.`` or ``..`` segment, however the value is spelled."""

from __future__ import annotations

import json

import pytest

from tests.conftest import StartGateway
from tests.security.recorder import (
    Recorder,
    assert_no_private,
    assert_refused,
    assert_upstream_clean,
    config,
    send,
)

REWRITE = '[[routes]]\nname = "r"\npath = "/r/{tail:.*}"\nupstream = "files"\nrewrite = "/public/{tail}"\n'


@pytest.mark.parametrize(
    ("target", "status", "upstream"),
    [
        pytest.param("/r/..%2Fprivate/x", 400, [], id="enc-slash"),
        pytest.param("/r/..%5Cprivate/x", 400, [], id="enc-backslash"),
        pytest.param("/r/%252e%252e/private/x", 400, [], id="double-encoded-dotdot"),
        pytest.param("/r/%25252e%25252e/private/x", 400, [], id="triple-encoded-dotdot"),
        pytest.param("/r/..%3b/private/x", 400, [], id="dotdot-enc-semicolon"),
        pytest.param("/r/%2e%2e%3B/x", 400, [], id="enc-dotdot-enc-semicolon"),
        pytest.param("/r/.%253Bx/y", 400, [], id="dot-double-enc-semicolon"),
        pytest.param("/r/..;/private/x", 400, [], id="dotdot-semicolon"),
        # normalized before routing: the dots climb out of /r itself
        pytest.param("/r/%2e%2e/x", 404, [], id="enc-dotdot-leaves-the-route"),
        pytest.param("/r/..", 404, [], id="dotdot-to-root"),
        pytest.param("/r/x/../../private/x", 401, [], id="climb-into-private"),
        # ordinary values pass
        pytest.param("/r/a/b", 200, ["/public/a/b"], id="plain"),
        pytest.param("/r/a.b/..c/d..", 200, ["/public/a.b/..c/d.."], id="dots-inside-names"),
        pytest.param("/r/x/./y", 200, ["/public/x/y"], id="dot-normalized-away"),
        pytest.param("/r/a?q=..", 200, ["/public/a?q=.."], id="query-untouched"),
    ],
)
async def test_rewrite(
    target: str, status: int, upstream: list[str], gateway: StartGateway, recorder: Recorder
) -> None:
    gw = await gateway(config(recorder.url, routes=REWRITE))
    response = await send(gw.port, target)
    if status >= 400:
        assert_refused(response, status)
    else:
        assert response.status == status, response.body[:300]
    assert recorder.targets == upstream
    assert_upstream_clean(recorder)
    assert_no_private(recorder)


async def test_rewrite_with_catch_all_lands_on_the_catch_all(gateway: StartGateway, recorder: Recorder) -> None:
    gw = await gateway(config(recorder.url, routes=REWRITE, catch_all=True))
    response = await send(gw.port, "/r/%2e%2e/x")
    assert response.status == 200
    assert recorder.targets == ["/x"]
    assert_upstream_clean(recorder)
    assert_no_private(recorder)


# --- orchestration ------------------------------------------------------------------------

ORCHESTRATION = """
[[routes]]
name = "o"
path = "/o/{id}"
[[routes.steps]]
name = "s"
upstream = "files"
path = "/public/{path.id}/x.json"

[[routes]]
name = "oq"
path = "/oq"
[[routes.steps]]
name = "s"
upstream = "files"
path = "/public/q?x={query.q}"

[[routes]]
name = "oqp"
path = "/oqp"
[[routes.steps]]
name = "s"
upstream = "files"
path = "/public/{query.q}/y"

[[routes]]
name = "oh"
path = "/oh"
[[routes.steps]]
name = "s"
upstream = "files"
path = "/public/h"
headers = { "X-Target" = "{header.X-Id}" }

[[routes]]
name = "ob"
path = "/ob"
methods = ["POST"]
[[routes.steps]]
name = "s"
upstream = "files"
method = "POST"
path = "/public/b"
body = { name = "{body.name}", note = "about {body.name}" }
"""


@pytest.mark.parametrize(
    ("target", "status", "upstream"),
    [
        pytest.param("/o/..%2Fprivate", 400, [], id="path-enc-slash"),
        pytest.param("/o/%2e%2e", 404, [], id="path-enc-dotdot-normalized-to-root"),
        pytest.param("/o/..", 404, [], id="path-dotdot-normalized-to-root"),
        pytest.param("/o/%252e%252e", 400, [], id="path-double-encoded-dotdot"),
        pytest.param("/o/..%3B", 400, [], id="path-dotdot-enc-semicolon"),
        pytest.param("/o/.%3Bx", 400, [], id="path-dot-enc-semicolon"),
        pytest.param("/o/..;x", 400, [], id="path-dotdot-semicolon"),
        pytest.param("/o/abc", 200, ["/public/abc/x.json"], id="path-plain"),
        pytest.param("/o/a.b", 200, ["/public/a.b/x.json"], id="path-dot-inside"),
        pytest.param("/oq?q=..", 400, [], id="query-dotdot"),
        pytest.param("/oq?q=%2e%2e%2f", 400, [], id="query-enc-dotdot-slash"),
        pytest.param("/oq?q=.", 400, [], id="query-dot"),
        pytest.param("/oq?q=..;", 400, [], id="query-dotdot-semicolon"),
        pytest.param("/oq?q=%252e%252e", 400, [], id="query-double-encoded-dotdot"),
        pytest.param("/oq?q=a\\..\\b", 400, [], id="query-backslash-dotdot"),
        pytest.param("/oq?q=ok.x", 200, ["/public/q?x=ok.x"], id="query-plain"),
        pytest.param("/oqp?q=..", 400, [], id="query-in-path-dotdot"),
        pytest.param("/oqp?q=%2e%2e", 400, [], id="query-in-path-enc-dotdot"),
        pytest.param("/oqp?q=a/../../private", 400, [], id="query-in-path-climb"),
        pytest.param("/oqp?q=a/b", 200, ["/public/a%2Fb/y"], id="query-in-path-slash-encoded"),
    ],
)
async def test_orchestration_path_and_query(
    target: str, status: int, upstream: list[str], gateway: StartGateway, recorder: Recorder
) -> None:
    gw = await gateway(config(recorder.url, routes=ORCHESTRATION))
    response = await send(gw.port, target)
    if status >= 400:
        assert_refused(response, status)
    else:
        assert response.status == status, response.body[:300]
        assert response.body == b"{}"
    assert recorder.targets == upstream
    assert_upstream_clean(recorder)
    assert_no_private(recorder)


@pytest.mark.parametrize(
    ("value", "status"),
    [
        pytest.param("../x", 400, id="dotdot-slash"),
        pytest.param("..", 400, id="dotdot"),
        pytest.param("%2e%2e", 400, id="enc-dotdot"),
        pytest.param("..;", 400, id="dotdot-semicolon"),
        pytest.param("x\\..\\y", 400, id="backslash-dotdot"),
        pytest.param("a.b", 200, id="dot-inside"),
        pytest.param("...", 200, id="three-dots"),
    ],
)
async def test_orchestration_header(value: str, status: int, gateway: StartGateway, recorder: Recorder) -> None:
    gw = await gateway(config(recorder.url, routes=ORCHESTRATION))
    response = await send(gw.port, "/oh", headers=[("X-Id", value)])
    if status >= 400:
        assert_refused(response, status)
        assert recorder.requests == []
    else:
        assert response.status == status, response.body[:300]
        assert recorder.targets == ["/public/h"]
        assert recorder.requests[0].all("X-Target") == [value]
    assert_upstream_clean(recorder)


@pytest.mark.parametrize(
    ("name", "status"),
    [
        pytest.param("..", 400, id="dotdot"),
        pytest.param(".", 400, id="dot"),
        pytest.param("../../private/x", 400, id="climb"),
        pytest.param("%2e%2e", 400, id="enc-dotdot"),
        pytest.param("%252e%252e", 400, id="double-enc-dotdot"),
        pytest.param("..;jsessionid=x", 400, id="dotdot-params"),
        pytest.param({"k": ".."}, 400, id="nested-dotdot"),
        pytest.param(["ok", ".."], 400, id="array-dotdot"),
        pytest.param({"..": "ok"}, 400, id="key-dotdot"),
        pytest.param("a.b", 200, id="dot-inside"),
        pytest.param("..a", 200, id="dots-prefix"),
        pytest.param(7, 200, id="number"),
    ],
)
async def test_orchestration_body(
    name: object, status: int, gateway: StartGateway, recorder: Recorder
) -> None:
    gw = await gateway(config(recorder.url, routes=ORCHESTRATION))
    response = await send(gw.port, "/ob", method="POST", headers=[("Content-Type", "application/json")],
                          body=json.dumps({"name": name}).encode())
    if status >= 400:
        assert_refused(response, status)
        assert recorder.requests == []
    else:
        assert response.status == status, response.body[:300]
        assert [r.request_line for r in recorder.requests] == ["POST /public/b HTTP/1.1"]
        sent = json.loads(recorder.requests[0].body)
        assert sent["name"] == name
    assert_upstream_clean(recorder)
