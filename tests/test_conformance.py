"""The native client speaks exactly the arthurai SDK's protocol.

Both drive the same local Arthur through a recording wrapper; for the same rows they must send
equivalent requests (method, path, query, auth and organization headers, JSON bodies equal once
parsed) and accept or refuse the same responses.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from urllib.parse import parse_qs

import pytest

from otel_arthur.clients.v3 import ArthurClient, AuthenticationError, ModelNotFoundError
from otel_arthur.config import ArthurSettings
from otel_arthur.local import arthur
from otel_arthur.local.runner import BackgroundServer
from otel_arthur.onboarding import create_model

COMPARED_HEADERS = ("authorization", "arthur-organization-id", "accept", "content-type")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def key(self):
        return self.method, self.path, self.query

    def json(self):
        return json.loads(self.body) if self.body else None


class Recorder:
    """ASGI wrapper keeping every HTTP request it passes on."""

    def __init__(self, app):
        self.app = app
        self.requests: list[Recorded] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append(Recorded(
            scope["method"], scope["path"], parse_qs(scope["query_string"].decode()),
            {k.decode().lower(): v.decode() for k, v in scope["headers"]}, body))
        pending = iter(messages)

        async def replay():
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)

    def take(self):
        taken, self.requests = self.requests, []
        return [r for r in taken if not r.path.startswith("/_local")]


@pytest.fixture(scope="module")
def recorded_arthur(tmp_path_factory):
    app = arthur.create_app(tmp_path_factory.mktemp("conformance") / "arthur.sqlite3")
    recorder = Recorder(app)
    try:
        with BackgroundServer(recorder) as server:
            yield server.url, recorder
    finally:
        app.state.store.close()


@pytest.fixture(scope="module")
def model_id(recorded_arthur):
    from arthurai import ArthurAI

    url, recorder = recorded_arthur
    client = ArthurAI(url=url, access_key=arthur.DEFAULT_API_KEY, allow_insecure=True)
    model_id = create_model(client, "conformance", "conformance")
    recorder.take()
    return model_id


def _rows(tag):
    return [
        {"partner_inference_id": f"{tag}-{i}", "inference_timestamp": "2026-11-25T08:00:00.123456+00:00",
         "inference_data": {"prompt": f"Human: question {i} ☃", "completion": f"answer {i}",
                            "prompt_tokens": 3, "duration": 0.25, "finish_reason": "stop"}}
        for i in range(3)
    ]


def _sdk(url, **credentials):
    from arthurai import ArthurAI

    return ArthurAI(url=url, allow_insecure=True, **credentials)


def _native(url, model, **credentials):
    return ArthurClient(ArthurSettings.resolve(url=url, model_id=model, allow_insecure=True, **credentials))


def _without_logins(requests):
    return [r for r in requests if r.path != "/api/v3/login"]


def _assert_equivalent(sdk_requests, native_requests):
    assert [r.key() for r in native_requests] == [r.key() for r in sdk_requests]
    for sdk_request, native_request in zip(sdk_requests, native_requests):
        for header in COMPARED_HEADERS:
            assert native_request.headers.get(header) == sdk_request.headers.get(header), (sdk_request.key(), header)
        assert native_request.json() == sdk_request.json(), sdk_request.key()


def test_api_key_session_sends_the_same_requests(recorded_arthur, model_id, arthur_env):
    url, recorder = recorded_arthur
    sdk_model = _sdk(url, access_key=arthur.DEFAULT_API_KEY).get_model(model_id)
    sdk_model.send_inferences(_rows("key"))
    sdk_requests = recorder.take()

    native = _native(url, model_id, api_key=arthur.DEFAULT_API_KEY)
    model = native.get_model(model_id)
    results = native.send_inferences(model.id, _rows("key"))
    native_requests = recorder.take()

    assert [r.key()[:2] for r in sdk_requests] == [
        ("GET", "/api/v3/users/me"), ("GET", f"/api/v3/models/{model_id}"),
        ("POST", f"/api/v3/models/{model_id}/inferences")]
    _assert_equivalent(sdk_requests, native_requests)
    assert [r.status for r in results] == [200, 200, 200]
    assert {a.name for a in model.attributes} == {a.name for a in sdk_model.get_attributes()}


def _jwt_subject(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def test_login_session_sends_the_same_requests(recorded_arthur, model_id, arthur_env):
    url, recorder = recorded_arthur
    credentials = {"login": arthur.DEFAULT_LOGIN, "password": arthur.DEFAULT_PASSWORD}
    _sdk(url, **credentials).get_model(model_id).send_inferences(_rows("login"))
    sdk_requests = recorder.take()
    native = _native(url, model_id, **credentials)
    native.send_inferences(native.get_model(model_id).id, _rows("login"))
    native_requests = recorder.take()

    sdk_logins = [r for r in sdk_requests if r.path == "/api/v3/login"]
    native_logins = [r for r in native_requests if r.path == "/api/v3/login"]
    assert native_logins and sdk_logins  # the SDK logs in twice at construction; we log in once
    assert all(r.json() == credentials and r.method == "POST" for r in sdk_logins + native_logins)
    assert all(r.headers["accept"] == "application/json" for r in sdk_logins + native_logins)

    # Tokens differ per login, so compare what they say, then the rest of each request exactly.
    sdk_rest, native_rest = _without_logins(sdk_requests), _without_logins(native_requests)
    for request in sdk_rest + native_rest:
        assert _jwt_subject(request.headers.pop("authorization")) == arthur.DEFAULT_LOGIN
    _assert_equivalent(sdk_rest, native_rest)


def test_both_accept_the_same_mixed_207(recorded_arthur, model_id, arthur_env):
    url, recorder = recorded_arthur
    rows = _rows("mixed")
    rows[1]["inference_data"]["no_such_attribute"] = 1
    rows[2]["inference_data"]["prompt_tokens"] = "three"
    sdk_response = _sdk(url, access_key=arthur.DEFAULT_API_KEY).get_model(model_id).send_inferences(
        rows, fail_silently=True)
    native = _native(url, model_id, api_key=arthur.DEFAULT_API_KEY)
    native_results = native.send_inferences(model_id, _rows("mixed-native")[:1] + rows[1:])
    recorder.take()
    assert [r["status"] for r in sdk_response["results"]] == [r.status for r in native_results] == [200, 400, 400]
    assert [r["message"] for r in sdk_response["results"][1:]] == [r.message for r in native_results[1:]]


def test_both_refuse_a_bad_key(recorded_arthur, model_id, arthur_env):
    from arthurai.common.exceptions import UserValueError

    url, recorder = recorded_arthur
    with pytest.raises(UserValueError):
        _sdk(url, access_key="wrong-key")
    with pytest.raises(AuthenticationError) as refused:
        _native(url, model_id, api_key="wrong-key").get_model(model_id)
    assert "wrong-key" not in str(refused.value)
    recorder.take()


def test_both_refuse_an_unknown_model(recorded_arthur, model_id, arthur_env):
    from arthurai.common.exceptions import ResponseClientError

    url, recorder = recorded_arthur
    with pytest.raises(ResponseClientError):
        _sdk(url, access_key=arthur.DEFAULT_API_KEY).get_model("00000000-0000-4000-8000-000000000000")
    with pytest.raises(ModelNotFoundError):
        _native(url, "x", api_key=arthur.DEFAULT_API_KEY).get_model("00000000-0000-4000-8000-000000000000")
    recorder.take()


def test_partner_model_id_is_found_too(recorded_arthur, model_id, arthur_env):
    url, recorder = recorded_arthur
    native = _native(url, "conformance", api_key=arthur.DEFAULT_API_KEY)
    assert native.get_model("conformance").id == model_id
    [request] = [r for r in recorder.take() if r.path.startswith("/api/v3/models")]
    assert request.query == {"id_type": ["partner_model_id"], "expand": ["attributes"]}
