"""Every command is documented: help text, an example, a current man page and completions."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from conftest import ROOT, run_cli
from embtool.cli.main import cli

COMMANDS = sorted(cli.list_commands(click.Context(cli)))


def test_docs_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen" / "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _examples(cmd: click.Command) -> list[str]:
    """The command lines of a help text's Example block (continued lines joined, comments dropped)."""
    block = cmd.help.partition("Example:")[2].replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _man_text(name: str) -> str:
    """A man page as text (roff escapes undone)."""
    return (ROOT / "man" / f"{name}.1").read_text(encoding="utf-8").replace("\\-", "-").replace("\\&", "")


def _completions(*words: str) -> list[str]:
    """What the shell completion scripts would offer after `embtool WORDS` (they ask the program itself)."""
    r = CliRunner().invoke(cli, [], prog_name="embtool", env={"_EMBTOOL_COMPLETE": "bash_complete",
                                                            "COMP_WORDS": " ".join(["embtool", *words]), "COMP_CWORD": str(len(words))})
    assert r.exit_code == 0, r.output
    return [line.split(",", 1)[1] for line in r.output.splitlines() if line]


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_example(name):
    """Each command's own help, example, man page and completions: the example runs this command with options it
    has, the man page is this command's (its name, every option, its example), completion offers the command and
    every one of its options."""
    cmd = cli.get_command(click.Context(cli), name)
    assert cmd.help and len(cmd.help.strip()) > 40
    before, _, example = cmd.help.partition("Example:")
    assert example.strip() and before.rstrip(" ").endswith("\b\n"), "help must end with a \\b Example: block"
    r = run_cli([name, "--help"])
    assert r.exit_code == 0 and "Example:" in r.stdout and "embtool " + name in r.stdout
    for line in _examples(cmd):
        words = shlex.split(next(part for part in line.split("|") if "embtool" in part))
        assert words[:2] == ["embtool", name], line
        try:
            cmd.make_parser(click.Context(cmd, info_name=name)).parse_args(words[2:])
        except click.UsageError as e:
            raise AssertionError(f"{name}'s example {line!r}: {e}") from None
    options = sorted(o for p in cmd.params if isinstance(p, click.Option) for o in [*p.opts, *p.secondary_opts] if o.startswith("--"))
    man = _man_text(f"embtool-{name}")
    assert man.startswith(f'.TH "EMBTOOL-{name.upper()}"') and f"\n.SH NAME\nembtool-{name} - " in man
    options_section = man[man.index(".SH OPTIONS"):]
    listed = [line[3:] for line in options_section.splitlines() if line.startswith(".B ")]
    assert [o for o in options if not any(o in re.split(r"[ ,/]+", entry) for entry in listed)] == []
    example_lines = [line.strip() for line in cmd.help.partition("Example:")[2].splitlines() if line.strip()]
    assert [line for line in example_lines if line not in man] == []
    assert name in _completions(name[:3])
    assert set(options) <= set(_completions(name, "--")), set(options) - set(_completions(name, "--"))


def test_completion_scripts_ask_the_program():
    """The three completion scripts (generated, checked current above) call `embtool` with the variable its entry
    point answers, so they offer what _completions sees."""
    for f in ("embtool.bash", "embtool.zsh", "embtool.fish"):
        text = (ROOT / "completions" / f).read_text(encoding="utf-8")
        assert "_EMBTOOL_COMPLETE=" in text and "embtool" in text.replace("_embtool", ""), f


def test_version_lists_runtime_versions():
    r = run_cli(["--version"])
    assert r.exit_code == 0
    for lib in ("onnxruntime", "tokenizers", "numpy"):
        assert lib in r.stdout
