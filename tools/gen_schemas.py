"""Write docs/schema/<command>.json: the JSON Schema of each command's --json output (`schema`:
"embtool.<command>/1"). One vocabulary of keys across commands; tests/test_contract.py validates every
command's --json against these files. Run: .venv/bin/python tools/gen_schemas.py"""

from __future__ import annotations

import json
from pathlib import Path

from embtool.api import FORMATS

OUT = Path(__file__).resolve().parent.parent / "docs" / "schema"

INT = {"type": "integer", "minimum": 0}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
SHARE = {"type": "number", "minimum": 0, "maximum": 1}
COSINE = {"type": "number", "minimum": -1, "maximum": 1}

# names other commands used for the same things before the vocabulary was fixed: never in a summary
RETIRED = ["params_before", "params_after", "embedding_params_before", "embedding_params_after", "recall@10",
           "path", "bytes"]

EVAL = {"type": "object", "description": "The output vs the input model on --eval held-out texts.",
        "required": ["texts", "cosine_mean", "cosine_min", "recall_at_10"],
        "properties": {"texts": INT, "cosine_mean": COSINE, "cosine_min": COSINE,
                       "recall_at_10": {**SHARE, "description": "mean overlap of each text's 10 nearest held-out neighbours, input vs output"},
                       "identical_tokenization": SHARE, "new_unknown_token_share": NUM,
                       "source": {**STR, "description": "the --eval file, \"built-in sample\", or (shrink) \"held-out corpus lines\""},
                       "prefix": {**STR, "description": "shrink: the prefix the held-out lines were embedded with"},
                       "languages": {"type": "array", "items": STR}},
        "additionalProperties": False}
GATE = {"type": "object", "description": "The --min-* thresholds given and those that failed.",
        "required": ["failed"],
        "properties": {"min_cosine": COSINE, "min_cosine_min": COSINE, "min_recall": SHARE,
                       "failed": {"type": "array", "items": STR}, "message": STR},
        "additionalProperties": False}
PER_TENSOR = {"type": "array", "items": {"type": "object", "required": ["tensor", "bits"],
                                         "properties": {"tensor": STR, "bits": INT, "shape": {"type": "array", "items": INT},
                                                        "bytes_before": INT, "bytes_after": INT}}}


def summary(command: str, description: str, props: dict, required: list[str], writer: bool = True) -> dict:
    common = {"schema": {"const": f"embtool.{command}/1"}, "model": STR, "seconds": NUM}
    if writer:
        common.update({"output": {"type": ["string", "null"]}, "written": BOOL, "bytes_before": INT, "bytes_after": INT,
                       "eval": {"$ref": "#/$defs/eval"}, "gate": {"$ref": "#/$defs/gate"}, "passed": BOOL,
                       "notes": {"type": "array", "items": STR}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"embtool.{command}/1",
        "title": f"embtool {command} --json",
        "description": description,
        "type": "object",
        "required": ["schema", "model", *(["output", "written"] if writer else []), *required],
        "properties": {**{k: False for k in RETIRED}, **common, **props},
        "$defs": {"eval": EVAL, "gate": GATE} if writer else {},
    }


SCHEMAS = {
    "inspect": summary("inspect", "What a model holds.", {
        "source": {"type": ["object", "null"], "required": ["id", "revision", "commit"],
                   "description": "For a model given as a Hub id: the id, the revision asked for and the commit it "
                                  "resolved to (null for a local path).",
                   "properties": {"id": STR, "revision": STR, "commit": {"type": "string", "pattern": "^[0-9a-f]{40}$"}},
                   "additionalProperties": False},
        "format": {"enum": ["safetensors", "onnx"]}, "layout": STR, "weight_files": {"type": "array", "items": STR},
        "architecture": {"type": ["string", "null"]}, "model_type": {"type": ["string", "null"]},
        "hidden_size": {"type": ["integer", "null"]}, "layers": INT,
        "tokenizer": {"type": ["object", "null"]}, "embedding_rows": {"type": ["integer", "null"]},
        "vocab_tensors": {"type": "array"},
        "parameters": {"type": "object", "required": ["total", "vocabulary", "rest"],
                       "properties": {"total": INT, "vocabulary": INT, "rest": INT, "vocabulary_share": SHARE}},
        "bytes": {"type": "object", "required": ["weights_file"], "properties": {"weights_file": INT}},
        "provenance": {"type": "array", "items": {"type": "object", "required": ["command"]},
                       "description": "The embtool commands that made this model, oldest first."},
    }, ["format", "hidden_size", "layers", "parameters", "bytes"], writer=False),
    "embed": summary("embed", "Embeddings written to a file (-o FILE).", {
        "texts": INT, "dim": INT, "tokens": INT, "truncated": INT, "max_length": INT, "pooling": STR,
        "normalize": BOOL, "output": STR, "written": BOOL,
        "format": {"enum": list(FORMATS)},
        "precision": {"enum": ["float32", "float16", "int8", "binary"]}, "texts_per_second": {"type": ["number", "null"]},
    }, ["texts", "dim", "output", "written", "format", "precision"], writer=False),
    "search": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "embtool.search/1",
        "title": "embtool search --json", "description": "JSON Lines: one object per hit, in query order then rank order.",
        "type": "object", "required": ["schema", "query_no", "rank", "score", "id", "text"],
        "properties": {"schema": {"const": "embtool.search/1"}, "query_no": INT, "query": {"type": ["string", "null"]},
                       "rank": {"type": "integer", "minimum": 1}, "score": NUM,
                       "id": {"type": "integer", "description": "the row's id as the index stores it (ids may repeat "
                              "across index files: file and row tell the rows apart)"},
                       "text": STR, "file": {**STR, "description": "the index file of the hit"},
                       "row": {**INT, "description": "the hit's row in that file"}},
        "additionalProperties": False,
    },
    "export-onnx": summary("export-onnx", "A safetensors model exported to an ONNX folder.", {"file": STR},
                           ["file", "bytes_before", "bytes_after"]),
    "trim-vocab": summary("trim-vocab", "Vocabulary trimming.", {
        "vocab_before": INT, "vocab_after": INT, "parameters_before": INT, "parameters_after": INT,
        "corpus_coverage": {"type": ["number", "null"]}, "dry_run": BOOL, "bytes_after_estimate": INT,
    }, ["vocab_before", "vocab_after", "parameters_before", "parameters_after", "bytes_before", "dry_run"]),
    "quantize": summary("quantize", "Group-wise quantization (uniform or mixed precision).", {
        "group_size": INT, "symmetric": BOOL, "method": STR, "gptq_sequential": BOOL, "format": STR, "tensors": INT,
        "bits_per_weight": NUM,
        "per_tensor": PER_TENSOR,
        "mixed_precision": {"type": "object", "properties": {"per_tensor": PER_TENSOR}},
    }, ["group_size", "method"]),
    "dequantize": summary("dequantize", "A quantized model back to float weights.", {"tensors": INT},
                          ["bytes_before", "bytes_after"]),
    "factorize": summary("factorize", "The embedding table as F (V x k) times P (k x D).", {
        "rank": INT, "hidden": INT, "rows": INT, "energy": SHARE, "rel_frobenius_error": NUM,
        "embedding_parameters_before": INT, "embedding_parameters_after": INT,
        "corpus_weighted": {"type": "object", "description": "--corpus: the basis weighted each row by its token's count + 1; "
                            "energy and rel_error under that weighting (the top-level ones are unweighted).",
                            "required": ["corpus_lines", "corpus_tokens", "rows_used", "energy", "rel_error"],
                            "properties": {"corpus_lines": INT, "corpus_tokens": INT, "rows_used": INT, "energy": SHARE,
                                           "rel_error": NUM, "smoothing": NUM, "prefixes": {"type": "array", "items": STR}},
                            "additionalProperties": False},
    }, ["rank", "embedding_parameters_before", "embedding_parameters_after", "bytes_before", "bytes_after"]),
    "shrink": summary("shrink", "Trim to a corpus, quantize to a size budget, measure on held-out corpus lines.", {
        "max_size": INT, "share": {"type": "number", "minimum": 0}, "training_lines": INT, "eval_seconds": NUM,
        "steps": {"type": "array", "items": {"type": "object", "required": ["step", "bytes_after", "seconds"],
                                             "properties": {"step": {"enum": ["trim-vocab", "quantize"]}, "bytes_after": INT,
                                                            "seconds": NUM, "vocab_before": INT, "vocab_after": INT,
                                                            "bits": {"type": "array", "items": INT}, "bits_per_weight": NUM,
                                                            "method": STR}}},
    }, ["max_size", "bytes_before", "bytes_after", "steps", "eval", "passed"]),
    "defactorize": summary("defactorize", "A factorized table multiplied back out.", {}, ["bytes_before", "bytes_after"]),
    "init-subwords": summary("init-subwords", "A new vocabulary's embedding rows from the source model.", {
        "tokenizer": STR, "method": STR, "vocab_before": INT, "vocab_after": INT, "dry_run": BOOL,
        "rows": {"type": "object"}, "embedding_parameters_before": INT, "embedding_parameters_after": INT,
    }, ["tokenizer", "method", "vocab_before", "vocab_after", "embedding_parameters_before", "embedding_parameters_after"]),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, schema in SCHEMAS.items():
        (OUT / f"{name}.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(SCHEMAS)} schemas to {OUT}")


if __name__ == "__main__":
    main()
