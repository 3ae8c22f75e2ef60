import logging

import pytest

from otel_arthur.config import ArthurSettings, ConfigurationError, parse_attribute_map

ENV = ("ARTHUR_ENDPOINT_URL", "ARTHUR_API_KEY", "ARTHUR_LOGIN", "ARTHUR_PASSWORD", "ARTHUR_ORGANIZATION_ID",
       "ARTHUR_MODEL_ID", "ARTHUR_ALLOW_INSECURE", "ARTHUR_TIMEOUT", "ARTHUR_ATTRIBUTE_MAP", "VERIFY_SSL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_arguments_win_over_environment(monkeypatch):
    monkeypatch.setenv("ARTHUR_ENDPOINT_URL", "https://env.example")
    monkeypatch.setenv("ARTHUR_API_KEY", "env-key")
    monkeypatch.setenv("ARTHUR_MODEL_ID", "env-model")
    settings = ArthurSettings.resolve(url="https://arg.example/", model_id="arg-model")
    assert (settings.url, settings.model_id, settings.api_key) == ("https://arg.example", "arg-model", "env-key")


def test_environment_fills_everything(monkeypatch):
    monkeypatch.setenv("ARTHUR_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("ARTHUR_ALLOW_INSECURE", "true")
    monkeypatch.setenv("ARTHUR_LOGIN", "admin")
    monkeypatch.setenv("ARTHUR_PASSWORD", "pw")
    monkeypatch.setenv("ARTHUR_ORGANIZATION_ID", "org-from-env")
    monkeypatch.setenv("ARTHUR_MODEL_ID", "m")
    monkeypatch.setenv("ARTHUR_TIMEOUT", "2.5")
    monkeypatch.setenv("ARTHUR_ATTRIBUTE_MAP", "duration=latency, model=llm_model")
    settings = ArthurSettings.resolve()
    assert settings.login == "admin" and settings.password == "pw" and settings.allow_insecure
    assert (settings.url, settings.model_id, settings.organization_id) == ("http://127.0.0.1:1", "m", "org-from-env")
    assert settings.timeout == 2.5
    assert settings.attribute_map == {"duration": "latency", "model": "llm_model"}


def test_secrets_stay_out_of_repr():
    settings = ArthurSettings.resolve(url="https://a.example", api_key="KEY-123", model_id="m")
    assert "KEY-123" not in repr(settings)
    settings = ArthurSettings.resolve(url="https://a.example", login="me", password="PW-456", model_id="m")
    assert "PW-456" not in repr(settings)


@pytest.mark.parametrize("kwargs, message", [
    ({"model_id": "m", "api_key": "k"}, "no Arthur URL"),
    ({"url": "https://a.example", "api_key": "k"}, "no Arthur model"),
    ({"url": "https://a.example", "model_id": "m"}, "no Arthur credentials"),
    ({"url": "https://a.example", "model_id": "m", "login": "me"}, "never prompts"),
    ({"url": "http://a.example", "model_id": "m", "api_key": "k"}, "ARTHUR_ALLOW_INSECURE"),
    ({"url": "ftp://a.example", "model_id": "m", "api_key": "k"}, "not an http(s) URL"),
])
def test_unusable_settings_name_the_problem(kwargs, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ArthurSettings.resolve(**kwargs)


def test_bad_environment_value_is_logged_and_default_used(monkeypatch, caplog):
    monkeypatch.setenv("ARTHUR_TIMEOUT", "soon")
    with caplog.at_level(logging.WARNING):
        settings = ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m")
    assert settings.timeout == 10.0
    assert "ARTHUR_TIMEOUT" in caplog.text


def test_bad_explicit_argument_raises():
    with pytest.raises(ValueError):
        ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m", timeout=0)


def test_attribute_map_syntax():
    assert parse_attribute_map("a=b,,c = d ") == {"a": "b", "c": "d"}
    with pytest.raises(ValueError):
        parse_attribute_map("a")


def test_spool_settings_argument_environment_default(monkeypatch, tmp_path):
    from otel_arthur.config import DEFAULT_MAX_TEXT_BYTES, DEFAULT_SPOOL_MAX_BYTES

    required = {"url": "https://a.example", "api_key": "k", "model_id": "m"}
    monkeypatch.delenv("ARTHUR_SPOOL_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    settings = ArthurSettings.resolve(**required)
    assert settings.spool_dir == str(tmp_path / "state" / "otel-arthur")
    assert (settings.spool_max_bytes, settings.max_text_bytes) == (DEFAULT_SPOOL_MAX_BYTES, DEFAULT_MAX_TEXT_BYTES)
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert ArthurSettings.resolve(**required).spool_dir.endswith("/.local/state/otel-arthur")
    monkeypatch.setenv("ARTHUR_SPOOL_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("ARTHUR_SPOOL_MAX_BYTES", "1000")
    monkeypatch.setenv("ARTHUR_MAX_TEXT_BYTES", "many")
    settings = ArthurSettings.resolve(**required)
    assert (settings.spool_dir, settings.spool_max_bytes) == (str(tmp_path / "env"), 1000)
    assert settings.max_text_bytes == DEFAULT_MAX_TEXT_BYTES  # a bad environment value: logged, default used
    assert ArthurSettings.resolve(**required, spool_dir=tmp_path / "arg").spool_dir == str(tmp_path / "arg")
    with pytest.raises(ValueError):
        ArthurSettings.resolve(**required, spool_max_bytes=0)


def test_an_explicit_login_beats_an_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("ARTHUR_API_KEY", "env-key")
    settings = ArthurSettings.resolve(url="https://a.example", model_id="m", login="me", password="pw")
    assert (settings.api_key, settings.login) == (None, "me")
    settings = ArthurSettings.resolve(url="https://a.example", model_id="m", api_key="arg-key", login="me",
                                      password="pw")
    assert (settings.api_key, settings.login, settings.password) == ("arg-key", None, None)
