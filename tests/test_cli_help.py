"""Every command explains itself: ``--help`` with examples (and exit codes where they vary), cheaply."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest

from otel_arthur import __version__, cli, exit_codes

COMMANDS = [
    (), ("doctor",), ("spool",), ("spool", "stats"), ("spool", "dead-letters"), ("spool", "replay"), ("spool", "purge"),
    ("create-model",), ("serve",), ("local-arthur",), ("local-engine",), ("local-openai",),
]
WITH_EXIT_CODES = {(), ("doctor",), ("spool",), ("spool", "replay"), ("spool", "purge"), ("create-model",), ("serve",)}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "otel-arthur")
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "examples:\n  " in out and f"otel-arthur {' '.join(command)}" in out
    if command in WITH_EXIT_CODES:
        assert "exit codes:\n  0  " in out


def test_doctor_help_documents_every_code_it_can_return(capsys):
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--help"])
    out = capsys.readouterr().out
    for code in (exit_codes.CONFIGURATION, exit_codes.UNREACHABLE, exit_codes.REFUSED, exit_codes.SPOOL):
        assert f"  {code}  {exit_codes.DESCRIPTIONS[code]}" in out


def test_help_of_the_operator_commands_does_not_import_the_sdk():
    code = textwrap.dedent(
        """
        import sys
        from otel_arthur import cli
        for command in (["doctor", "--help"], ["spool", "replay", "--help"]):
            try:
                cli.main(command)
            except SystemExit as exit:
                assert exit.code == 0, exit.code
        assert "arthurai" not in sys.modules
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def otel_arthur(*argv: str, spool_dir: os.PathLike) -> subprocess.CompletedProcess:
    """The command in its own process, without the developer's Arthur settings; never left hanging."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ARTHUR_") and name != "VERIFY_SSL"}
    env["ARTHUR_SPOOL_DIR"] = str(spool_dir)
    return subprocess.run([sys.executable, "-m", "otel_arthur.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=60)


def test_serve_without_a_url_is_one_line_naming_the_setting_and_the_configuration_code(tmp_path):
    done = otel_arthur("serve", spool_dir=tmp_path)
    assert done.returncode == exit_codes.CONFIGURATION, done.stderr
    [line] = done.stderr.splitlines()
    assert line.endswith("ERROR otel_arthur: no Arthur URL: pass --url or set ARTHUR_ENDPOINT_URL"
                         " (for Arthur Engine: pass --engine-url or set ARTHUR_ENGINE_URL)"), line


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_an_unexpected_error_is_one_line_and_a_traceback_with_debug_after_the_command(tmp_path, debug):
    # local-arthur checks its TLS flags with a ValueError before serving: the generic path, cheaply
    done = otel_arthur("local-arthur", "--certfile", "cert.pem", *(["--debug"] if debug else []), spool_dir=tmp_path)
    assert done.returncode == exit_codes.ERROR, done.stderr
    if debug:
        assert "Traceback (most recent call last)" in done.stderr
    else:
        [line] = done.stderr.splitlines()
        assert line.endswith("ERROR otel_arthur: ValueError: --certfile and --keyfile go together"), line


def test_debug_is_accepted_after_a_nested_command_and_other_strays_are_still_refused(capsys, tmp_path):
    assert cli.main(["spool", "stats", "--spool-dir", str(tmp_path), "--debug"]) == exit_codes.OK
    with pytest.raises(SystemExit) as exit_:
        cli.main(["spool", "stats", "--debug", "--verbose"])
    assert exit_.value.code == exit_codes.USAGE
    assert "unrecognized arguments: --verbose" in capsys.readouterr().err


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"otel-arthur {importlib.metadata.version('otel-arthur')}\n"
    assert __version__ == importlib.metadata.version("otel-arthur")  # the package says what pyproject.toml says
