"""The native client against the local Arthur: login, token renewal, organization lookup, errors."""

import pytest
import requests
from starlette.responses import JSONResponse

from otel_arthur.clients import v3 as client_module
from otel_arthur.clients.http import RetryableError
from otel_arthur.clients.v3 import ArthurClient, AuthenticationError
from otel_arthur.config import ArthurSettings
from otel_arthur.local import arthur
from otel_arthur.local.runner import BackgroundServer

AUTH_INFO = f"{arthur.API_PREFIX}/users/me/auth_info"
OTHER_ORGANIZATION_ID = "3f0c6b0e-1b7a-4c1e-9d2a-5a0e8c7d6b41"  # not the local Arthur's default


def _client(url, **credentials):
    return ArthurClient(ArthurSettings.resolve(url=url, model_id="m", allow_insecure=True, **credentials))


def _logins(local_arthur):
    return local_arthur.stats()["requests"].get("POST /api/v3/login", {}).get("200", 0)


def test_login_once_then_reuse_the_token(local_arthur):
    client = _client(local_arthur.url, login=arthur.DEFAULT_LOGIN, password=arthur.DEFAULT_PASSWORD)
    before = _logins(local_arthur)
    assert client.organization_id == arthur.DEFAULT_ORGANIZATION_ID
    for _ in range(3):
        with pytest.raises(client_module.ModelNotFoundError):
            client.get_model("nope")
    assert _logins(local_arthur) - before == 1


def test_token_renewed_before_it_expires(local_arthur, monkeypatch):
    # A renewal window longer than the token's life means every request must log in afresh.
    monkeypatch.setattr(client_module, "REFRESH_BEFORE_EXPIRY", arthur.TOKEN_TTL + 60)
    client = _client(local_arthur.url, login=arthur.DEFAULT_LOGIN, password=arthur.DEFAULT_PASSWORD)
    before = _logins(local_arthur)
    for _ in range(3):
        with pytest.raises(client_module.ModelNotFoundError):
            client.get_model("nope")
    assert _logins(local_arthur) - before >= 3


def test_wrong_password_is_an_authentication_error_without_the_secret(local_arthur):
    client = _client(local_arthur.url, login=arthur.DEFAULT_LOGIN, password="hunter2-wrong")
    with pytest.raises(AuthenticationError) as refused:
        client.get_model("m")
    assert "hunter2-wrong" not in str(refused.value) and "hunter2-wrong" not in repr(client)


def test_unreachable_arthur_is_retryable():
    client = _client("http://127.0.0.1:9", api_key="k", timeout=1)
    with pytest.raises(RetryableError, match="cannot connect"):
        client.get_model("m")


def test_the_environment_is_read_once_and_still_decides_proxies_and_netrc(local_arthur, monkeypatch, tmp_path):
    """requests' environment (HTTP_PROXY, NO_PROXY, …) is read at the first request, not at each one;
    it still decides, and a ~/.netrc never replaces the API key."""
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login intruder password netrc-secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = _client(local_arthur.url, api_key=local_arthur.api_key, timeout=2)
    with pytest.raises(RetryableError, match="cannot connect"):
        proxied.get_model("m")

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = _client(local_arthur.url, api_key=local_arthur.api_key, timeout=2)
    with pytest.raises(client_module.ModelNotFoundError):  # reached Arthur, authenticated by the key
        direct.get_model("nope")
    monkeypatch.setenv("NO_PROXY", "")  # read once: this client keeps going direct
    with pytest.raises(client_module.ModelNotFoundError):
        direct.get_model("nope")


@pytest.mark.parametrize("good", [True, False], ids=["api-key", "bad-key"])
def test_auth_info_names_the_callers_organizations(local_arthur, good):
    key = local_arthur.api_key if good else "not-the-key"
    response = requests.get(local_arthur.url + AUTH_INFO, headers={"Authorization": key}, timeout=5)
    if not good:
        assert response.status_code == 401
        return
    assert response.status_code == 200
    info = response.json()
    assert info["organization_ids"] == [local_arthur.organization_id]
    assert info["username"] == local_arthur.login


class _ForbidUsersMe:
    """ASGI wrapper: ``GET /users/me`` answers 403, as Arthur does for some API keys; the rest is the local Arthur.

    The local Arthur itself never refuses /users/me with 403 (it does so only for a foreign
    ``Arthur-Organization-ID``, which the organization lookup does not send), hence the wrapper.
    """

    def __init__(self, app):
        self.app = app
        self.forbidden = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == f"{arthur.API_PREFIX}/users/me":
            self.forbidden += 1
            await JSONResponse({"message": "Forbidden"}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


@pytest.fixture
def users_me_forbidden():
    """A local Arthur (own organization id) whose /users/me answers 403; yields (url, wrapper, store)."""
    app = arthur.create_app(":memory:", organization_id=OTHER_ORGANIZATION_ID)
    wrapper = _ForbidUsersMe(app)
    try:
        with BackgroundServer(wrapper) as server:
            yield server.url, wrapper, app.state.store
    finally:
        app.state.store.close()


@pytest.mark.parametrize("credentials", [{"api_key": arthur.DEFAULT_API_KEY},
                                         {"login": arthur.DEFAULT_LOGIN, "password": arthur.DEFAULT_PASSWORD}],
                         ids=["api-key", "login"])
def test_organization_from_auth_info_when_users_me_is_forbidden(users_me_forbidden, credentials):
    url, wrapper, store = users_me_forbidden
    client = _client(url, **credentials)
    assert client.organization_id == OTHER_ORGANIZATION_ID
    assert wrapper.forbidden == 1
    assert store.stats()["requests"][f"GET {AUTH_INFO}"] == {"200": 1}
    # Arthur accepts the organization found there: the next request gets as far as the model lookup.
    with pytest.raises(client_module.ModelNotFoundError):
        client.get_model("nope")
    assert wrapper.forbidden == 1 and store.stats()["requests"][f"GET {AUTH_INFO}"] == {"200": 1}  # looked up once
