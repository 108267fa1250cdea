"""Every command is documented: help text, an example, a current man page and completions."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from conftest import ROOT, run_cli
from embtool.cli.main import cli

COMMANDS = sorted(cli.list_commands(click.Context(cli)))


def test_docs_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen" / "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_example(name):
    cmd = cli.get_command(click.Context(cli), name)
    assert cmd.help and len(cmd.help.strip()) > 40
    before, _, example = cmd.help.partition("Example:")
    assert example.strip() and before.rstrip(" ").endswith("\b\n"), "help must end with a \\b Example: block"
    r = run_cli([name, "--help"])
    assert r.exit_code == 0 and "Example:" in r.stdout and "embtool " + name in r.stdout
    assert (ROOT / "man" / f"embtool-{name}.1").is_file()
    for f in ("embtool.bash", "embtool.zsh", "embtool.fish"):
        assert (ROOT / "completions" / f).is_file()


def test_version_lists_runtime_versions():
    r = run_cli(["--version"])
    assert r.exit_code == 0
    for lib in ("onnxruntime", "tokenizers", "numpy"):
        assert lib in r.stdout
