"""`embtool inspect`: what a model folder holds."""

from __future__ import annotations

import json
import sys

import click

from embtool import api
from embtool.cli.options import human_bytes, model_argument, table


def render(d: dict) -> str:
    p, b = d["parameters"], d["bytes"]
    tok = d["tokenizer"]
    rows = [
        ["path", d["model"]],
        *([["hub", f"{d['source']['id']}@{d['source']['revision']} (commit {d['source']['commit']})"]] if d.get("source") else []),
        ["format", f"{d['format']} ({d['layout']}: {', '.join(d['weight_files'])})"],
        ["architecture", f"{d['architecture']}  hidden {_or(d['hidden_size'], 'unknown')}  layers {_or(d['layers'], 'unknown')}"],
        ["tokenizer", "none" if tok is None else f"{tok['type']}, {tok['vocab_size']:,} tokens"],
        ["special tokens", "none" if tok is None or not tok["special_tokens"]
         else " ".join(f"{k}={v}" for k, v in tok["special_tokens"].items())],
        ["embedding rows", f"{d['embedding_rows']:,}" if d["embedding_rows"] else "not found"],
        ["parameters", f"{p['total']:,}  (vocabulary-bound {p['vocabulary']:,} = {100 * p['vocabulary_share']:.1f}%, rest {p['rest']:,})"],
        ["bytes", f"{human_bytes(b['weights_file'])} on disk  (vocabulary {human_bytes(b['vocabulary'])}, rest {human_bytes(b['rest'])})"],
        ["dtypes", ", ".join(f"{k}: {v:,}" for k, v in d["dtypes"].items())],
        ["pooling", f"{d['pooling'] or 'not set (mean)'}, normalize "
                    f"{'not set (no)' if d['normalize'] is None else 'yes' if d['normalize'] else 'no'}"],
        ["quantized", quantized_text(d["state"]["quantized"])],
        ["factorized", factorized_text(d["state"]["factorized"])],
        ["made by", " -> ".join(s.get("command", "?") for s in d["provenance"]) or "not an embtool output"],
    ]
    vt = [[v["name"], v["role"], "x".join(map(str, v["shape"])), v["dtype"], human_bytes(v["bytes"])] for v in d["vocab_tensors"]]
    out = table(rows)
    if vt:
        out += "\n\nvocabulary-axis tensors:\n" + table(vt, ["name", "role", "shape", "dtype", "bytes"])
    return out


def _or(v, default: str) -> str:
    return default if v is None or v == 0 else f"{v:,}" if isinstance(v, int) else str(v)


def _plain(v) -> str:
    """A value of a state record as words: lists joined, booleans yes/no, dicts as `key value` pairs."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return "/".join(_plain(x) for x in v) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_plain(x)}" for k, x in v.items())
    return "none" if v is None else str(v)


def quantized_text(q) -> str:
    """The `quantized` row: e.g. `4 bits, groups of 32, asymmetric` or `ONNX int8 matrices: 38`."""
    if not q:
        return "no"
    if not isinstance(q, dict):
        return _plain(q)
    if "ops" in q or "integer_matrices" in q:
        parts = []
        if q.get("ops"):
            parts.append("operators " + ", ".join(q["ops"]))
        if q.get("integer_matrices"):
            parts.append(f"{q['integer_matrices']} integer weight matrices")
        return "yes: " + ("; ".join(parts) or "integer weights")
    if "scheme" in q and isinstance(q["scheme"], str):  # the packed-weights record: {tensor: {bits, group_size, ...}}
        try:
            rec = json.loads(q["scheme"])
        except json.JSONDecodeError:
            return "yes (unreadable record)"
        bits = sorted({int(r.get("bits", 0)) for r in rec.values() if isinstance(r, dict)})
        groups = sorted({int(r.get("group_size", 0)) for r in rec.values() if isinstance(r, dict)})
        return f"{len(rec)} tensors at {_plain(bits)} bits, groups of {_plain(groups)}"
    parts = []
    if "bits" in q:
        bits = q["bits"]
        parts.append(f"{_plain(sorted(set(bits.values())) if isinstance(bits, dict) else bits)} bits")
    if q.get("group_size"):
        parts.append(f"groups of {q['group_size']}")
    if "symmetric" in q:
        parts.append("zero points on some tensors" if q["symmetric"] == "mixed" else "symmetric" if q["symmetric"] else "asymmetric")
    if q.get("portable"):
        parts.append("standard ONNX operators")
    rest = {k: v for k, v in q.items() if k not in ("bits", "group_size", "symmetric", "portable")}
    if rest:
        parts.append(_plain(rest))
    return ", ".join(parts) or "yes"


def factorized_text(f) -> str:
    """The `factorized` row: e.g. `rank 128 (embeddings.word_embeddings.weight = F·P)`."""
    if not f:
        return "no"
    if not isinstance(f, dict):
        return _plain(f)
    text = f"rank {f['rank']}" if "rank" in f else "yes"
    if f.get("per_tensor"):
        text += f" ({f['per_tensor']} = F·P)"
    rest = {k: v for k, v in f.items() if k not in ("rank", "per_tensor", "F", "P")}
    return text + (f", {_plain(rest)}" if rest else "")


@click.command(name="inspect")
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table (schema: docs/schema/).")
def command(model: str, as_json: bool) -> None:
    """Show what a model holds: format, architecture, tokenizer, the embedding matrix and everything
    on the vocabulary axis, and parameters/bytes split into vocabulary-bound and the rest.

    The table goes to stdout (it is the command's data); --json prints one JSON object instead,
    for CI checks on sizes.

    A Hub id (org/name, org/name@revision) is read from the Hugging Face cache, or downloaded; the
    table then shows the commit it resolved to (--json: "source").

    \b
    Example:
      embtool inspect all-MiniLM-L6-v2/
      embtool inspect sentence-transformers/all-MiniLM-L6-v2@main
      embtool inspect model-fr/ --json | jq .parameters.total
    """
    d = api.inspect(model)
    if as_json:
        sys.stdout.write(json.dumps(d, ensure_ascii=False) + "\n")
    else:
        click.echo(render(d))
