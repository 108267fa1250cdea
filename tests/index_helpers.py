"""Shared by the index tests (tests/test_embed_search.py, tests/test_ray.py): every encoder option through every
index writer, checked by what `search` makes of a text query."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from conftest import SENTENCES, run_cli

# each option changes the embedding of the model below (max pooling, a Normalize module, prompts without a
# "query" one, 32 dimensions): test_every_option_changes_the_embedding checks it, so a writer that dropped an
# option would make search embed queries differently
ENCODER_OPTIONS = {
    "pooling-cls": ["--pooling", "cls"],
    "pooling-mean": ["--pooling", "mean"],
    "no-normalize": ["--no-normalize"],
    "prefix": ["--prefix", "passage: "],
    "prompt-name": ["--prompt-name", "doc"],
    "max-length": ["--max-length", "5"],
    "dim": ["--dim", "12"],
}
TEXTS = SENTENCES[:6]


def options_model(tiny_bert: Path, folder: Path) -> Path:
    """The tiny BERT with max pooling (so cls and mean are both not its default) and prompts ("doc", "other"; no
    "query" prompt, so search's query prefix is the index's)."""
    shutil.copytree(tiny_bert, folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"doc": "doc: ", "other": "o: "}}))
    return folder


def embed_with(writer: str, model: Path, options: list[str], texts: list[str], out: Path) -> list[Path]:
    """Embed `texts` with `options` through `writer`; returns the index files written, in order."""
    (out.parent / "texts.txt").write_text("\n".join(texts) + "\n")
    base = ["embed", model, "-i", out.parent / "texts.txt", *options, "--quiet"]
    if writer in ("plain", "parquet"):
        path = out.with_suffix(".safetensors" if writer == "plain" else ".parquet")
        runs, files = [[*base, "-o", path]], [path]
    elif writer == "shard":
        files = [out.with_name(f"{out.name}-{i}.safetensors") for i in range(2)]
        runs = [[*base, "--shard", f"{i}/2", "-o", f] for i, f in enumerate(files)]
    else:  # ray, ray-parquet: one part per 4 texts
        fmt = ["--format", "parquet"] if writer == "ray-parquet" else []
        runs, files = [[*base, "--ray", "--workers", "1", "--shard-rows", "4", *fmt, "-o", out]], None
    for args in runs:
        r = run_cli(args)
        assert r.exit_code == 0, r.stderr
    return files or sorted(p for p in out.iterdir() if p.name.startswith("part-"))


def assert_search_embeds_queries_like_the_documents(files: list[Path], texts: list[str]) -> None:
    """`search FILES -q texts --metric l2 -k 1`: each text finds its own row at distance 0, which holds only when
    search embeds the query exactly as the document was embedded (same pooling, normalisation, prefix, truncation,
    dimensions; up to float error)."""
    import embtool

    rows = {}
    for f in files:
        ix = embtool.open_index(f)
        for r in range(len(ix)):
            rows[int(ix.ids[r])] = np.asarray(ix.block(r, r + 1)[0], dtype=np.float64)
    assert sorted(rows) == list(range(len(texts)))
    q = files[0].parent / "queries.txt"
    q.write_text("\n".join(texts) + "\n")
    r = run_cli(["search", *files, "-q", q, "--metric", "l2", "-k", "1", "--json"])
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    hits = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(h["query_no"], h["id"], h["text"]) for h in hits] == [(i, i, t) for i, t in enumerate(texts)]
    for h in hits:  # squared distances: float error of two embeddings of one text, nothing more
        assert h["score"] <= 1e-6 * max(1.0, float(rows[h["id"]] @ rows[h["id"]])), h
