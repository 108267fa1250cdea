"""`embtool inspect`: what a model folder holds."""

from __future__ import annotations

import json
import sys

import click

from embtool.cli.options import human_bytes, model_argument, summary_json, table
from embtool.core.describe import describe
from embtool.core.model import open_model


def render(d: dict) -> str:
    p, b = d["parameters"], d["bytes"]
    tok = d["tokenizer"]
    rows = [
        ["path", d["path"]],
        ["format", f"{d['format']} ({d['layout']}: {', '.join(d['weight_files'])})"],
        ["architecture", f"{d['architecture']}  hidden {d['hidden_size']}  layers {d['layers']}"],
        ["tokenizer", "none" if tok is None else f"{tok['type']}, {tok['vocab_size']:,} tokens"],
        ["special tokens", "" if tok is None else " ".join(f"{k}={v}" for k, v in tok["special_tokens"].items())],
        ["embedding rows", f"{d['embedding_rows']:,}" if d["embedding_rows"] else "not found"],
        ["parameters", f"{p['total']:,}  (vocabulary-bound {p['vocabulary']:,} = {100 * p['vocabulary_share']:.1f}%, rest {p['rest']:,})"],
        ["bytes", f"{human_bytes(b['weights_file'])} on disk  (vocabulary {human_bytes(b['vocabulary'])}, rest {human_bytes(b['rest'])})"],
        ["dtypes", ", ".join(f"{k}: {v:,}" for k, v in d["dtypes"].items())],
        ["pooling", f"{d['pooling'] or 'not set (mean)'}, normalize {d['normalize']}"],
        ["quantized", json.dumps(d["state"]["quantized"]) if d["state"]["quantized"] else "no"],
        ["factorized", json.dumps(d["state"]["factorized"]) if d["state"]["factorized"] else "no"],
        ["made by", " -> ".join(s.get("command", "?") for s in d["provenance"]) or "not an embtool output"],
    ]
    vt = [[v["name"], v["role"], "x".join(map(str, v["shape"])), v["dtype"], human_bytes(v["bytes"])] for v in d["vocab_tensors"]]
    out = table(rows)
    if vt:
        out += "\n\nvocabulary-axis tensors:\n" + table(vt, ["name", "role", "shape", "dtype", "bytes"])
    return out


@click.command(name="inspect")
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table (schema: docs/schema/).")
def command(model: str, as_json: bool) -> None:
    """Show what a model holds: format, architecture, tokenizer, the embedding matrix and everything
    on the vocabulary axis, and parameters/bytes split into vocabulary-bound and the rest.

    The table goes to stdout (it is the command's data); --json prints one JSON object instead,
    for CI checks on sizes.

    \b
    Example:
      embtool inspect all-MiniLM-L6-v2/
      embtool inspect model-fr/ --json | jq .parameters.total
    """
    d = describe(open_model(model))
    if as_json:
        sys.stdout.write(json.dumps(summary_json("inspect", d), ensure_ascii=False) + "\n")
    else:
        click.echo(render(d))
