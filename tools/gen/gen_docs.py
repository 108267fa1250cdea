"""Generate man/ and completions/ from the click command tree.

    python tools/gen/gen_docs.py           # (re)write the files
    python tools/gen/gen_docs.py --check   # exit 1 if any file is stale (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.shell_completion import BashComplete, FishComplete, ZshComplete

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from embtool import __version__  # noqa: E402
from embtool.cli.main import cli  # noqa: E402

DATE = "2026-11"


def _roff(text: str) -> str:
    out = []
    for line in text.replace("\\", "\\\\").splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line.replace("-", "\\-"))
    return "\n".join(out)


def man_page(name: str, cmd: click.Command, parent: str | None) -> str:
    full = f"{parent} {name}" if parent else name
    ctx = click.Context(cmd, info_name=full)
    help_text = cmd.help or ""
    first = help_text.strip().split("\n\n")[0].replace("\n", " ")
    lines = [f'.TH "{full.upper().replace(" ", "-")}" "1" "{DATE}" "embtool {__version__}" "embtool manual"',
             ".SH NAME", f"{full.replace(' ', '-')} \\- {_roff(first)}", ".SH SYNOPSIS",
             f".B {full}", _roff(" ".join(cmd.collect_usage_pieces(ctx))), ".SH DESCRIPTION"]
    for para in help_text.strip().split("\n\n"):
        if para.lstrip().startswith("\b"):
            lines += [".PP", ".nf", _roff(para.replace("\b", "").strip("\n")), ".fi"]
        else:
            lines += [".PP", _roff(" ".join(x.strip() for x in para.splitlines()))]
    opts = [p for p in cmd.get_params(ctx) if isinstance(p, click.Option)]
    if opts:
        lines.append(".SH OPTIONS")
        for p in opts:
            rec = p.get_help_record(ctx)
            if rec:
                lines += [".TP", f".B {_roff(rec[0])}", _roff(rec[1])]
    if cmd.epilog:
        title, _, body = cmd.epilog.replace("\b", "").strip("\n").partition("\n")
        lines += [f".SH {title.rstrip(':').upper()}", ".nf", _roff(body), ".fi"]
    if isinstance(cmd, click.Group):
        lines.append(".SH COMMANDS")
        for sub in cmd.list_commands(ctx):
            c = cmd.get_command(ctx, sub)
            lines += [".TP", f".B {sub}", _roff((c.help or "").strip().split("\n\n")[0].replace("\n", " ")),
                      f"See \\fB{name}\\-{sub}\\fR(1)."]
    lines += [".SH SEE ALSO", "embtool(1)" if parent else "https://github.com/ (README.md of the project)", ""]
    return "\n".join(lines)


def expected() -> dict[Path, str | bytes]:
    files: dict[Path, str] = {ROOT / "man" / "embtool.1": man_page("embtool", cli, None)}
    ctx = click.Context(cli, info_name="embtool")
    for name in cli.list_commands(ctx):
        files[ROOT / "man" / f"embtool-{name}.1"] = man_page(name, cli.get_command(ctx, name), "embtool")
    for cls, fname in ((BashComplete, "embtool.bash"), (ZshComplete, "embtool.zsh"), (FishComplete, "embtool.fish")):
        files[ROOT / "completions" / fname] = cls(cli, {}, "embtool", "_EMBTOOL_COMPLETE").source()
    # the search kernels' onnxruntime graphs, shipped serialized so that a search never imports onnx
    from embtool.runtime import kernels

    for name in kernels.GRAPHS:
        files[kernels.GRAPH_DIR / f"{name}.onnx"] = kernels.build_graph(name).SerializeToString()
    return files


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    files = expected()
    for path, text in files.items():
        binary = isinstance(text, bytes)
        if not path.exists() or (path.read_bytes() if binary else path.read_text()) != text:
            stale.append(path)
            if not check:
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(text) if binary else path.write_text(text)
    known = set(files)
    for d in ("man", "completions", "embtool/runtime/kernel_graphs"):
        for p in (ROOT / d).glob("*"):
            if p not in known:
                stale.append(p)
                if not check:
                    p.unlink()
    if check and stale:
        print("stale: " + ", ".join(str(p.relative_to(ROOT)) for p in stale) + " (run: make docs)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
