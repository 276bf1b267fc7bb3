"""Client data rendered into what is sent upstream: a proxy route's ``rewrite`` and an
orchestrated route's step templates (path, query part, headers, body) may never make a
``.`` or ``..`` segment, however the value is spelled."""

from __future__ import annotations

import json

import pytest

from tests.security.recorder import Front, Recorder, assert_outcome
from tests.support.auth import route, step

REWRITE = route("r", "/r/{tail:.*}", rewrite="/public/{tail}")
ORCHESTRATION = "".join([
    route("o", "/o/{id}", step("s", "/public/{path.id}/x.json"), upstream=None),
    route("oq", "/oq", step("s", "/public/q?x={query.q}"), upstream=None),
    route("oqp", "/oqp", step("s", "/public/{query.q}/y"), upstream=None),
    route("oh", "/oh", step("s", "/public/h", headers={"X-Target": "{header.X-Id}"}), upstream=None),
    route("ob", "/ob", step("s", "/public/b", method="POST", body={"name": "{body.name}", "note": "about {body.name}"}),
          upstream=None, methods=["POST"]),
])
ROUTES = REWRITE + ORCHESTRATION


@pytest.mark.parametrize(
    ("target", "status", "upstream"),
    [
        # refused: the value would make a dot segment upstream (/r: the rewrite; /o: a step's path;
        # /oq: a step's query part; /oqp: a query value in a step's path)
        pytest.param("/r/..%2Fprivate/x", 400, [], id="enc-slash"),
        pytest.param("/r/..%5Cprivate/x", 400, [], id="enc-backslash"),
        pytest.param("/r/%252e%252e/private/x", 400, [], id="double-encoded-dotdot"),
        pytest.param("/r/%25252e%25252e/private/x", 400, [], id="triple-encoded-dotdot"),
        pytest.param("/r/..%3b/private/x", 400, [], id="dotdot-enc-semicolon"),
        pytest.param("/r/%2e%2e%3B/x", 400, [], id="enc-dotdot-enc-semicolon"),
        pytest.param("/r/.%253Bx/y", 400, [], id="dot-double-enc-semicolon"),
        pytest.param("/r/..;/private/x", 400, [], id="dotdot-semicolon"),
        pytest.param("/o/..%2Fprivate", 400, [], id="path-enc-slash"),
        pytest.param("/o/%252e%252e", 400, [], id="path-double-encoded-dotdot"),
        pytest.param("/o/..%3B", 400, [], id="path-dotdot-enc-semicolon"),
        pytest.param("/o/.%3Bx", 400, [], id="path-dot-enc-semicolon"),
        pytest.param("/o/..;x", 400, [], id="path-dotdot-semicolon"),
        pytest.param("/oq?q=..", 400, [], id="query-dotdot"),
        pytest.param("/oq?q=%2e%2e%2f", 400, [], id="query-enc-dotdot-slash"),
        pytest.param("/oq?q=.", 400, [], id="query-dot"),
        pytest.param("/oq?q=..;", 400, [], id="query-dotdot-semicolon"),
        pytest.param("/oq?q=%252e%252e", 400, [], id="query-double-encoded-dotdot"),
        pytest.param("/oq?q=a\\..\\b", 400, [], id="query-backslash-dotdot"),
        pytest.param("/oqp?q=..", 400, [], id="query-in-path-dotdot"),
        pytest.param("/oqp?q=%2e%2e", 400, [], id="query-in-path-enc-dotdot"),
        pytest.param("/oqp?q=a/../../private", 400, [], id="query-in-path-climb"),
        # normalized before routing: the dots climb out of /r or /o itself
        pytest.param("/r/%2e%2e/x", 404, [], id="enc-dotdot-leaves-the-route"),
        pytest.param("/r/..", 404, [], id="dotdot-to-root"),
        pytest.param("/r/x/../../private/x", 401, [], id="climb-into-private"),
        pytest.param("/o/%2e%2e", 404, [], id="path-enc-dotdot-normalized-to-root"),
        pytest.param("/o/..", 404, [], id="path-dotdot-normalized-to-root"),
        # ordinary values pass
        pytest.param("/r/a/b", 200, ["/public/a/b"], id="plain"),
        pytest.param("/r/a.b/..c/d..", 200, ["/public/a.b/..c/d.."], id="dots-inside-names"),
        pytest.param("/r/x/./y", 200, ["/public/x/y"], id="dot-normalized-away"),
        pytest.param("/r/a?q=..", 200, ["/public/a?q=.."], id="query-untouched"),
        pytest.param("/o/abc", 200, ["/public/abc/x.json"], id="path-plain"),
        pytest.param("/o/a.b", 200, ["/public/a.b/x.json"], id="path-dot-inside"),
        pytest.param("/oq?q=ok.x", 200, ["/public/q?x=ok.x"], id="query-plain"),
        pytest.param("/oqp?q=a/b", 200, ["/public/a%2Fb/y"], id="query-in-path-slash-encoded"),
    ],
)
async def test_path_and_query(target: str, status: int, upstream: list[str], front: Front, recorder: Recorder) -> None:
    await front.start(routes=ROUTES)
    assert_outcome(await front.send(target), recorder, status, upstream)


async def test_rewrite_with_catch_all_lands_on_the_catch_all(front: Front, recorder: Recorder) -> None:
    await front.start(routes=ROUTES, catch_all=True)
    assert_outcome(await front.send("/r/%2e%2e/x"), recorder, 200, ["/x"])


# --- an orchestrated route's headers and body ---------------------------------------------


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
async def test_orchestration_header(value: str, status: int, front: Front, recorder: Recorder) -> None:
    await front.start(routes=ROUTES)
    response = await front.send("/oh", headers=[("X-Id", value)])
    assert_outcome(response, recorder, status, ["/public/h"] if status == 200 else [])
    if status == 200:
        assert recorder.requests[0].all("X-Target") == [value]


@pytest.mark.parametrize(
    ("document", "status"),
    [
        pytest.param({"name": ".."}, 400, id="dotdot"),
        pytest.param({"name": "."}, 400, id="dot"),
        pytest.param({"name": "../../private/x"}, 400, id="climb"),
        pytest.param({"name": "%2e%2e"}, 400, id="enc-dotdot"),
        pytest.param({"name": "%252e%252e"}, 400, id="double-enc-dotdot"),
        pytest.param({"name": "..;jsessionid=x"}, 400, id="dotdot-params"),
        pytest.param({"name": {"k": ".."}}, 400, id="nested-dotdot"),
        pytest.param({"name": ["ok", ".."]}, 400, id="array-dotdot"),
        pytest.param({"name": {"..": "ok"}}, 400, id="key-dotdot"),
        pytest.param({"name": "a.b"}, 200, id="dot-inside"),
        pytest.param({"name": "..a"}, 200, id="dots-prefix"),
        pytest.param({"name": 7}, 200, id="number"),
    ],
)
async def test_orchestration_body(document: dict[str, object], status: int, front: Front, recorder: Recorder) -> None:
    await front.start(routes=ROUTES)
    response = await front.send("/ob", method="POST", headers=[("Content-Type", "application/json")],
                                body=json.dumps(document).encode())
    assert_outcome(response, recorder, status, ["/public/b"] if status == 200 else [])
    if status == 200:
        assert recorder.requests[0].request_line == "POST /public/b HTTP/1.1"
        assert json.loads(recorder.requests[0].body)["name"] == document["name"]
