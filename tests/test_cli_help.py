"""Every command explains itself: ``--help`` with examples (and exit codes where they vary), cheaply."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from otel_arthur import cli, exit_codes

COMMANDS = [
    ("doctor",), ("spool",), ("spool", "stats"), ("spool", "dead-letters"), ("spool", "replay"), ("spool", "purge"),
    ("create-model",), ("local-arthur",), ("local-openai",),
]
WITH_EXIT_CODES = {("doctor",), ("spool",), ("spool", "replay"), ("spool", "purge"), ("create-model",)}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
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
