"""``create-model``: the model it onboards, its idempotence, its settings, and its command line."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import textwrap
import uuid
from typing import TYPE_CHECKING

import pytest

from otel_arthur import cli, exit_codes, onboarding
from otel_arthur.config import ConfigurationError
from otel_arthur.fields import FIELDS, Stage
from otel_arthur.local import arthur

if TYPE_CHECKING:
    from arthurai import ArthurAI


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    onboarding.add_arguments(parser)
    return parser.parse_args(argv)


# --- settings (no SDK needed) ----------------------------------------------------------------------


def test_importing_the_command_does_not_import_arthurai() -> None:
    code = textwrap.dedent(
        """
        import sys
        from otel_arthur import cli
        try:
            cli.main(["create-model", "--help"])
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        assert "arthurai" not in sys.modules, "create-model --help imported arthurai"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    for flag in (
        "--url",
        "--api-key",
        "--login",
        "--password",
        "--organization-id",
        "--allow-insecure",
        "--partner-model-id",
        "--display-name",
    ):
        assert flag in done.stdout
    assert "$ARTHUR_ENDPOINT_URL" in done.stdout


def test_flags_beat_the_environment_and_an_api_key_beats_a_login(arthur_env: pytest.MonkeyPatch) -> None:
    arthur_env.setenv("ARTHUR_ENDPOINT_URL", "https://env.example")
    arthur_env.setenv("ARTHUR_API_KEY", "env-key")
    arthur_env.setenv("ARTHUR_PASSWORD", "env-password")

    from_env = onboarding.resolve_connection(parse())
    flag_login = onboarding.resolve_connection(parse("--url", "https://flag.example", "--login", "me"))
    flag_key = onboarding.resolve_connection(parse("--login", "me", "--password", "pw", "--api-key", "flag-key"))

    assert (from_env.url, from_env.api_key, from_env.login) == ("https://env.example", "env-key", None)
    assert (flag_login.url, flag_login.api_key, flag_login.login, flag_login.password) == (
        "https://flag.example",
        None,
        "me",
        "env-password",
    )
    assert (flag_key.api_key, flag_key.login) == ("flag-key", None)
    assert "env-key" not in repr(from_env)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ((), {}, "no Arthur URL"),
        (("--url", "https://a.example"), {}, "no Arthur credentials"),
        (("--url", "https://a.example", "--login", "me"), {}, "has no password"),
        (("--url", "http://a.example", "--api-key", "k"), {}, "plain http"),
        (("--url", "http://a.example", "--api-key", "k"), {"ARTHUR_ALLOW_INSECURE": "false"}, "plain http"),
    ],
)
def test_unusable_settings_fail_clearly_and_never_prompt(
    arthur_env: pytest.MonkeyPatch, argv: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        arthur_env.setenv(name, value)

    with pytest.raises(ConfigurationError, match=message):
        onboarding.resolve_connection(parse(*argv))


def test_allow_insecure_comes_from_the_flag_or_the_environment(arthur_env: pytest.MonkeyPatch) -> None:
    argv = ("--url", "http://a.example", "--api-key", "k")
    assert onboarding.resolve_connection(parse(*argv, "--allow-insecure")).allow_insecure
    arthur_env.setenv("ARTHUR_ALLOW_INSECURE", "true")
    assert onboarding.resolve_connection(parse(*argv)).allow_insecure


def test_the_command_fails_with_one_line_and_never_prompts(
    arthur_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.ERROR):
        status = cli.main(["create-model", "--url", "https://a.example", "--login", "admin"])

    assert status == exit_codes.CONFIGURATION
    assert "has no password" in caplog.text
    assert capsys.readouterr().out == ""


# --- against the local Arthur, through the real SDK ------------------------------------------------


@pytest.fixture
def sdk() -> None:
    pytest.importorskip("arthurai", reason="arthurai installs on Python <= 3.11 only")


@pytest.fixture
def partner_model_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"  # the local Arthur is shared by the module's tests


@pytest.fixture
def client(sdk: None, local_arthur: arthur.RunningLocalArthur, arthur_env: pytest.MonkeyPatch) -> ArthurAI:
    from arthurai import ArthurAI

    return ArthurAI(url=local_arthur.url, access_key=local_arthur.api_key, allow_insecure=True)


def test_the_model_holds_every_field_at_its_stage_and_value_type(client: ArthurAI, partner_model_id: str) -> None:
    model_id = onboarding.create_model(client, partner_model_id, "Onboarding test")

    model = client.get_model(model_id)

    assert (model.partner_model_id, model.display_name) == (partner_model_id, "Onboarding test")
    assert (model.input_type, model.output_type) == ("NLP", "TOKEN_SEQUENCE")
    assert {a.name: (a.stage, a.value_type) for a in model.attributes} == {
        name: (field.stage, field.value_type) for name, field in FIELDS.items()
    }
    assert [a.name for a in model.attributes if a.stage == Stage.PIPELINE_INPUT] == ["prompt"]


def test_the_model_holds_the_cost_as_a_float(client: ArthurAI, partner_model_id: str) -> None:
    model = client.get_model(onboarding.create_model(client, partner_model_id, None))

    [cost] = [a for a in model.attributes if a.name == "cost_usd"]
    assert (cost.stage, cost.value_type) == (Stage.NON_INPUT_DATA, "FLOAT")


def test_a_partner_model_id_makes_it_idempotent(
    local_arthur: arthur.RunningLocalArthur, client: ArthurAI, partner_model_id: str
) -> None:
    before = local_arthur.stats()["models"]

    first = onboarding.create_model(client, partner_model_id, None)
    second = onboarding.create_model(client, partner_model_id, "another name")

    assert first == second
    assert local_arthur.stats()["models"] == before + 1
    assert client.get_model(first).display_name == partner_model_id


def test_without_ids_it_creates_a_model_with_the_default_display_name(client: ArthurAI) -> None:
    model = client.get_model(onboarding.create_model(client))

    assert model.display_name == onboarding.DEFAULT_DISPLAY_NAME


def test_create_model_twice_from_the_command_line_prints_one_id(
    sdk: None,
    local_arthur: arthur.RunningLocalArthur,
    arthur_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    partner_model_id: str,
) -> None:
    flags = [
        "--url",
        local_arthur.url,
        "--login",
        local_arthur.login,
        "--password",
        local_arthur.password,
        "--allow-insecure",
        "--partner-model-id",
        partner_model_id,
    ]
    assert cli.main(["create-model", *flags]) == 0
    first = capsys.readouterr().out

    for name, value in {
        "ARTHUR_ENDPOINT_URL": local_arthur.url,
        "ARTHUR_API_KEY": local_arthur.api_key,
        "ARTHUR_ALLOW_INSECURE": "true",
    }.items():
        arthur_env.setenv(name, value)
    assert cli.main(["create-model", "--partner-model-id", partner_model_id]) == 0
    second = capsys.readouterr().out

    model_id = local_arthur.store.get_model(partner_model_id, "partner_model_id")["id"]
    assert first == second == f"{model_id}\n"  # stdout carries the id and nothing else
