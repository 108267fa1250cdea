"""The `embtool` command group, and the one place that turns core errors into exit codes."""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from embtool import __version__
from embtool.errors import EmbtoolError


def _versions() -> str:
    """Versions from the installed packages' metadata: nothing is imported (onnxruntime would start its
    telemetry and allocate its thread pools just to print a number)."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (f"embtool {__version__} (python {sys.version.split()[0]}, numpy {v('numpy')}, "
            f"onnxruntime {v('onnxruntime')}, tokenizers {v('tokenizers')}, onnx {v('onnx')})")


def _print_version(ctx, _param, value) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_versions())
        ctx.exit()


class EmbtoolGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EmbtoolError as e:
            if os.environ.get("EMBTOOL_DEBUG"):
                traceback.print_exc()
            err = click.ClickException(str(e))
            err.exit_code = e.exit_code
            raise err from None
        except KeyboardInterrupt as e:
            click.echo(("Terminated" if type(e).__name__ == "Terminated" else "Interrupted") + "; nothing was written.", err=True)
            ctx.exit(143 if type(e).__name__ == "Terminated" else 130)
        except MemoryError:
            if os.environ.get("EMBTOOL_DEBUG"):
                traceback.print_exc()
            raise click.ClickException("out of memory") from None
        except BrokenPipeError:
            _silence_stdout()  # the reader went away (`| head -1`): stop quietly, as Unix tools do on SIGPIPE
            ctx.exit(SIGPIPE_EXIT)
        except OSError as e:
            if os.environ.get("EMBTOOL_DEBUG"):
                traceback.print_exc()
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None

    def list_commands(self, ctx):
        return sorted(self.commands)


EXIT_STATUS = """\b
Exit status:
  0    success
  1    an error: bad input, a missing or unreadable file (MODEL, -c, -i, --eval, --calib, --keep,
       --tokenizer, INDEX, ...), an unusable model, a full disk; one "Error: ..." line on stderr
  2    a usage error: unknown option, bad value or combination of flags
  3    a fidelity gate failed (--min-cosine, --min-cosine-min, --min-recall): the summary is still
       printed (--json: "passed": false), the model is not written
  130  interrupted (SIGINT), 143 terminated (SIGTERM): nothing written
  141  stdout closed by its reader (SIGPIPE, e.g. `| head -1`): stops quietly, as Unix tools do"""


@click.group(cls=EmbtoolGroup, epilog=EXIT_STATUS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show embtool's version and the versions of onnxruntime, tokenizers and numpy it runs with.")
def cli() -> None:
    """Shrink transformer text-embedding models and run them, without PyTorch.

    Every command reads a model folder (Hugging Face / sentence-transformers layout, safetensors or
    ONNX) and writes a new, complete folder atomically; summaries go to stderr, or to stdout as one
    JSON object with --json.

    \b
    Example:
      embtool inspect all-MiniLM-L6-v2/
      embtool embed all-MiniLM-L6-v2/ -i texts.txt -o texts.safetensors
      embtool search texts.safetensors "a query" -k 5
    """


def _register() -> None:
    from embtool.cli import (embed_cmd, export_cmd, factorize_cmd, inspect_cmd, quantize_cmd, search_cmd, shrink_cmd,
                             subwords_cmd, trim_cmd)

    for mod in (inspect_cmd, embed_cmd, export_cmd, search_cmd, shrink_cmd, trim_cmd, quantize_cmd, factorize_cmd, subwords_cmd):
        cli.add_command(mod.command)
    cli.add_command(quantize_cmd.dequantize_command)
    cli.add_command(factorize_cmd.defactorize_command)


_register()


class _NoteHandler(logging.Handler):
    """Notes of the core (`logging.getLogger("embtool")`, e.g. which ONNX file of a folder was used) as
    `note: ...` lines on stderr, unless the running command has --quiet; warnings (e.g. a written model
    far from its input) as `warning: ...` lines, always."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            click.echo(f"warning: {record.getMessage()}", err=True)
            return
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.params.get("quiet"):
            return
        click.echo(f"note: {record.getMessage()}", err=True)


_notes = logging.getLogger("embtool")
_notes.addHandler(_NoteHandler(logging.INFO))
_notes.setLevel(logging.INFO)
_notes.propagate = False


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader closed the pipe


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that nothing more (nor the flush at exit) fails on a closed or full stdout."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (tests' CliRunner)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an exception so that temporary outputs are removed on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main() -> None:
    import signal

    # the CLI owns its process: onnxruntime writes a telemetry device id under ~/.cache/Microsoft when it
    # loads unless this is set (an explicit ORT_DISABLE_TELEMETRY=0 is respected)
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli(prog_name="embtool")
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing was written.", err=True)
        sys.exit(130)
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(SIGPIPE_EXIT)
    except OSError as e:  # stdout unwritable outside a command: `embtool --version > /dev/full`
        _silence_stdout()
        click.echo(f"Error: cannot write to stdout: {e.strerror or e}", err=True)
        sys.exit(1)
