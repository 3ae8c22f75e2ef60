"""clients.http.Service: the environment's proxy and CA bundle as requests read them, a real forwarding
proxy on 127.0.0.1 (absolute-form request line, Proxy-Authorization, no user info sent), redirects refused."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import certifi
import pytest

from otel_arthur.clients.http import SetupError, environment_proxy, trusted_certificates
from otel_arthur.clients.v3 import ArthurClient
from otel_arthur.config import ArthurSettings

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                   "NO_PROXY", "REQUEST_METHOD")


@pytest.fixture
def clean_proxy_env(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class Scripted(ThreadingHTTPServer):
    """Answers every request with ``answer`` (status, headers, JSON body) and keeps each request line and headers."""

    daemon_threads = True

    def __init__(self, answer: tuple[int, dict[str, str], object]) -> None:
        self.answer = answer
        self.seen: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Scripted

    def do_GET(self) -> None:
        self.server.seen.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}))
        status, headers, body = self.server.answer
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:  # the test reads what it saw instead
        pass


@pytest.fixture
def scripted() -> Iterator[Callable[[tuple[int, dict[str, str], object]], Scripted]]:
    servers: list[Scripted] = []

    def start(answer: tuple[int, dict[str, str], object]) -> Scripted:
        server = Scripted(answer)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_proxy_chosen_by_scheme_then_all_and_no_proxy_by_name_domain_address_or_network(clean_proxy_env):
    env = clean_proxy_env
    env.setenv("HTTPS_PROXY", "proxy.internal:3128")
    env.setenv("ALL_PROXY", "http://fallback.internal:8080")
    assert environment_proxy("https://arthur.example/api") == "http://proxy.internal:3128"  # scheme added
    assert environment_proxy("http://arthur.example") == "http://fallback.internal:8080"
    env.setenv("NO_PROXY", "example.com, 10.0.0.0/8,192.168.1.7")
    assert environment_proxy("https://app.example.com") is None  # a domain covers its hosts
    assert environment_proxy("https://notexample.com") == "http://proxy.internal:3128"
    assert environment_proxy("https://10.2.3.4:8443") is None  # inside a CIDR network
    assert environment_proxy("https://192.168.1.7") is None and environment_proxy("https://192.168.1.8")
    env.setenv("NO_PROXY", "*")
    assert environment_proxy("https://arthur.example") is None


def test_ca_bundle_from_requests_variables_else_certifi(monkeypatch, tmp_path):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    assert trusted_certificates() == {"ca_certs": certifi.where()}
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bundle))
    assert trusted_certificates() == {"ca_certs": str(bundle)}
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path))  # first, and a directory of certificates
    assert trusted_certificates() == {"ca_cert_dir": str(tmp_path)}


def test_plain_http_through_a_proxy_sends_the_whole_url_and_proxy_credentials_never_the_url_user_info(
        clean_proxy_env, scripted):
    proxy = scripted((200, {}, {"organization_id": "org-through-proxy"}))
    clean_proxy_env.setenv("HTTP_PROXY", f"http://squid:pr%40xy-secret@127.0.0.1:{proxy.server_address[1]}")
    # Nothing listens at the service's own address: only the proxy can answer.
    client = ArthurClient(ArthurSettings.resolve(url="http://user:url-secret@127.0.0.1:9/base", api_key="the-key",
                                                 model_id="m", allow_insecure=True))
    try:
        assert client.organization_id == "org-through-proxy"
    finally:
        client.close()
    [(request_line, headers)] = proxy.seen
    assert request_line == "GET http://127.0.0.1:9/base/api/v3/users/me HTTP/1.1"
    assert headers["host"] == "127.0.0.1:9" and headers["authorization"] == "the-key"
    assert base64.b64decode(headers["proxy-authorization"].removeprefix("Basic ")) == b"squid:pr@xy-secret"
    assert "url-secret" not in request_line + json.dumps(headers)


def test_a_redirect_is_not_followed_and_names_where_it_points(clean_proxy_env, scripted):
    moved = scripted((301, {"Location": "https://arthur.example/api/v3/users/me?token=hidden"}, {}))
    client = ArthurClient(ArthurSettings.resolve(url=moved.url, api_key="k", model_id="m", allow_insecure=True))
    try:
        with pytest.raises(SetupError, match="answered 301, a redirect to https://arthur.example/api/v3/users/me:") \
                as refused:
            client.organization_id  # noqa: B018 (the lookup is the request)
    finally:
        client.close()
    assert "hidden" not in str(refused.value) and len(moved.seen) == 1
