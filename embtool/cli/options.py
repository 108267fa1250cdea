"""Options shared by several commands, written once (sqlite-utils' `output_options` style)."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click


SAMPLE_TEXTS = 200  # = embtool.jobs.fidelity.SAMPLE_TEXTS (not imported: the CLI imports jobs lazily)
GATE_FAILED_EXIT = 3  # a --min-* gate failed (see embtool.core.errors.FidelityError)


class ModelPath(click.ParamType):
    """A model folder, a .safetensors/.onnx file, or a Hub id (org/name[@revision]). Existence is checked
    by the core, so that a missing model is a one-line error (exit 1) like every other unusable model."""

    name = "MODEL"

    def convert(self, value: Any, param, ctx) -> str:
        return str(value)


class InputPath(click.Path):
    """An input file (or folder, with dir_okay): a missing or unreadable one is an error like a missing MODEL
    (`Error: PATH: no such file or folder`, exit 1), not a usage error (exit 2): the command line was right.
    With hub_id, a value that is no path is passed on for the core to resolve as a Hub id (org/name[@revision]), or
    to refuse with the same `no such file or folder` line."""

    def __init__(self, dir_okay: bool = False, allow_dash: bool = False, hub_id: bool = False):
        super().__init__(exists=False, dir_okay=dir_okay, file_okay=True, allow_dash=allow_dash)
        self.hub_id = hub_id

    def convert(self, value: Any, param, ctx) -> Any:
        import os
        from pathlib import Path

        if self.allow_dash and value == "-":
            return value
        p = Path(value)
        if not p.exists() and self.hub_id:
            return value  # the core resolves it as a Hub id, or says "no such file or folder"
        if not p.exists():
            raise click.ClickException(f"{value}: no such file or folder")
        if p.is_dir() and not self.dir_okay:
            raise click.ClickException(f"{value} is a folder; give a file")
        if not os.access(p, os.R_OK):
            raise click.ClickException(f"{value}: permission denied")
        return super().convert(value, param, ctx)


def cache_dir_option(f: Callable) -> Callable:
    """--cache-dir DIR: the Hugging Face Hub cache that Hub ids (MODEL, --tokenizer, --model) are read from and
    downloaded into."""
    return click.option("--cache-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
                        help="The Hugging Face Hub cache for a MODEL given as a Hub id, org/name[@revision] (default: "
                             "$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub; see docs/hub.md).")(f)


def model_argument(f: Callable | None = None, *, tokenizer_flag: str = "--tokenizer") -> Callable:
    """The MODEL argument (a folder, a file, or a Hub id org/name[@revision]), with --tokenizer PATH (for a model
    without a tokenizer.json beside it), --onnx-file NAME (which ONNX file of a folder with several) and --cache-dir
    DIR (the Hub cache); the command receives one `model` (a `ModelRef` when any option is given). init-subwords
    spells the first --source-tokenizer."""

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def inner(*a, model, model_tokenizer=None, onnx_file=None, cache_dir=None, **k):
            from embtool.api import ModelRef

            if model_tokenizer is not None or onnx_file is not None or cache_dir is not None:
                model = ModelRef(model, model_tokenizer, onnx_file, cache_dir)
            return f(*a, model=model, **k)

        g = cache_dir_option(inner)
        g = click.option("--onnx-file", default=None, metavar="NAME",
                         help="Which ONNX file of a folder with several (e.g. model_quantized.onnx; default model.onnx).")(g)
        g = click.option(tokenizer_flag, "model_tokenizer", type=InputPath(dir_okay=True, hub_id=True), default=None,
                         help="The model's tokenizer.json (or a folder holding it, or a Hub id), when there is none "
                              "beside the model.")(g)
        return click.argument("model", type=ModelPath())(g)

    return deco(f) if f is not None else deco


def output_option(required: bool = True, help: str = "Output model folder (built beside it, then renamed into place).") -> Callable:
    return click.option("-o", "--output", type=click.Path(dir_okay=True, file_okay=True), required=required, help=help)


def common_options(f: Callable | None = None, *,
                   json_help: str = "Print the summary as one JSON object on stdout (schema: docs/schema/).") -> Callable:
    """--json, --quiet and --threads (`@common_options`, or `@common_options(json_help=...)`). --quiet also
    silences the progress bars of Hub downloads."""

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def inner(*a, **k):
            from embtool.api import quiet_downloads

            with quiet_downloads(bool(k.get("quiet"))):
                return f(*a, **k)

        g = click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                         help="CPU threads for onnxruntime and numpy (0: OMP_NUM_THREADS if set, else all cores).")(inner)
        g = click.option("--quiet", is_flag=True, help="No progress bars or summaries on stderr.")(g)
        return click.option("--json", "as_json", is_flag=True, help=json_help)(g)

    return deco(f) if f is not None else deco


def eval_options(prefix: bool = True) -> Callable:
    """--eval FILE, --eval-limit, (--eval-prefix), and the CI gates --min-cosine, --min-cosine-min and
    --min-recall of the shrinking commands. The command receives them as one `evaluation` dict."""

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def inner(*a, eval_file=None, eval_limit=1000, eval_prefix="", min_cosine=None, min_cosine_min=None,
                  min_recall=None, no_eval=False, force_unsupported=False, **k):
            for opt, v in (("--min-cosine", min_cosine), ("--min-cosine-min", min_cosine_min), ("--min-recall", min_recall)):
                if v is not None and no_eval:
                    raise click.UsageError(f"{opt} needs the fidelity check; it does not go with --no-eval")
            if eval_file and no_eval:
                raise click.UsageError("--eval and --no-eval contradict each other")
            return f(*a, evaluation={"eval_file": eval_file, "eval_limit": eval_limit, "eval_prefix": eval_prefix,
                                     "min_cosine": min_cosine, "min_cosine_min": min_cosine_min,
                                     "min_recall": min_recall, "no_eval": no_eval,
                                     "force_unsupported": force_unsupported}, **k)

        fails = f"Fail (exit {GATE_FAILED_EXIT}, the --json summary still printed, nothing written) when"
        g = click.option("--force-unsupported", is_flag=True,
                         help="Write the output even when embtool's runtime cannot build the architecture (it is then "
                              "not checked; the summary says so). Without it such a model is refused up front.")(inner)
        g = click.option("--no-eval", is_flag=True,
                         help="Skip the default fidelity check (the output against the input on a built-in sample of "
                              f"{SAMPLE_TEXTS} held-out texts in the languages the model's tokenizer covers).")(g)
        g = click.option("--min-recall", type=click.FloatRange(0, 1), default=None,
                         help=f"{fails} recall@10 is below this (the mean share of each held-out text's "
                              "10 nearest held-out neighbours that the output model keeps).")(g)
        g = click.option("--min-cosine-min", type=click.FloatRange(-1, 1), default=None,
                         help=f"{fails} the minimum over held-out texts of the input-vs-output "
                              "cosine (the worst text) is below this.")(g)
        g = click.option("--min-cosine", type=click.FloatRange(-1, 1), default=None,
                         help=f"{fails} the mean over held-out texts of the input-vs-output "
                              "embedding cosine is below this.")(g)
        if prefix:
            g = click.option("--eval-prefix", default="", help="Prefix for --eval texts (e.g. 'passage: ').")(g)
        g = click.option("--eval-limit", type=click.IntRange(min=2), default=1000, show_default=True,
                         help="Use at most this many --eval texts.")(g)
        g = click.option("--eval", "eval_file", type=InputPath(), default=None,
                         help="Held-out texts: report the output's fidelity to the input (cosine, recall@10). "
                              f"Default: a built-in sample of {SAMPLE_TEXTS} texts (see --no-eval).")(g)
        return g

    return deco


def force_option(f: Callable) -> Callable:
    return click.option("--force", is_flag=True,
                        help="Replace the output if it exists and embtool wrote it (a folder whose embtool.json lists "
                             "every file in it with its sha256, an embeddings file of the same format, or an empty "
                             "one); anything else is refused.")(f)


def progress_bar(quiet: bool, total: int | None = None, unit: str = "text", desc: str | None = None):
    """A tqdm bar on stderr, shown only on a terminal and without --quiet (the API takes any object with
    update() as `progress`)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=quiet or not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False)


def emit_summary(summary: dict, as_json: bool, quiet: bool, render: Callable[[dict], str]) -> None:
    """JSON on stdout with --json; else a human summary on stderr (unless --quiet). A failed gate
    (summary["passed"] false) is then raised, after the summary: exit 3, with the reason on stderr."""
    if as_json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")  # the API's summary: already in the JSON vocabulary
        sys.stdout.flush()
    elif not quiet:
        click.echo(render(summary), err=True)
    if summary.get("passed") is False:
        from embtool.errors import FidelityError

        raise FidelityError(summary["gate"]["message"])



def table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    cells = ([header] if header else []) + [[str(c) for c in r] for r in rows]
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(len(r) for r in cells))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)).rstrip())
        if header and j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bytes_line(before: int, after: int) -> str:
    """The `bytes` line of a shrinking command's summary."""
    return f"bytes        {human_bytes(before)} -> {human_bytes(after)} ({100 * after / before:.1f}%)"


def eval_line(e: dict, what: str = "") -> str:
    """The `held-out` line of a summary from an --eval result (fidelity.compare)."""
    return (f"held-out     {e['texts']} texts{eval_source(e)}{what}: cosine mean {e['cosine_mean']:.5f}, min {e['cosine_min']:.5f}; "
            f"recall@10 agreement {e['recall_at_10']:.3f}")


def eval_source(e: dict) -> str:
    """' of the built-in sample (en, fr)' / ' of FILE' for the held-out line of a summary."""
    if not e.get("source"):
        return ""
    return f" of the {e['source']}" + (f" ({', '.join(e['languages'])})" if e.get("languages") else "") \
        if e["source"] == "built-in sample" else f" of {e['source']}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"


def parse_size(text: str) -> int:
    """'15MB', '1.5GB', '2000000' -> bytes (decimal units; KiB/MiB/GiB binary)."""
    t = text.strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "B": 1}
    for u, m in units.items():
        if t.endswith(u):
            return int(float(t[: -len(u)]) * m)
    return int(float(t))

