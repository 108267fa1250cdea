"""`embtool search`: exact nearest neighbours over embedding files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from embtool import api
from embtool.api import METRICS
from embtool.cli.options import InputPath, cache_dir_option, common_options


@click.command(name="search")
@click.argument("index", type=InputPath(dir_okay=True))
@click.argument("queries", nargs=-1)
@click.option("-q", "--queries-file", "query_files", multiple=True, help="File of query texts, one per line; '-' reads stdin.")
@click.option("--query-embeddings", type=InputPath(), default=None,
              help="Queries as vectors: a .npy matrix or an embtool .safetensors file.")
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Neighbours per query.")
@click.option("--metric", type=click.Choice(METRICS), default="cosine", show_default=True)
@click.option("--model", "model_path", default=None,
              help="Embed text queries with this model, a folder, file or Hub id (default: the one recorded in the index).")
@click.option("--tokenizer", "tokenizer_path", type=InputPath(dir_okay=True, hub_id=True), default=None,
              help="The model's tokenizer.json (or a folder holding it, or a Hub id), for a model without one beside it "
                   "(default: the one recorded in the index, if any).")
@cache_dir_option
@click.option("--query-prefix", default=None, help="Prefix for text queries (default: the model's query prompt, else the index's prefix), e.g. 'query: ' for e5.")
@click.option("--strict", is_flag=True,
              help="Refuse (instead of warn) when the model differs from the index's, when index files were embedded "
                   "differently, or when ids repeat (name more than one row).")
@click.option("--rescore", type=click.IntRange(min=0), default=None,
              help="int8/binary indexes: rescore this many candidates with the stored float vectors (binary: or int8 "
                   "codes) (0: off; default: a depth chosen from the index size).")
@click.option("--block-rows", type=click.IntRange(min=1), default=None,
              help="Index rows scored per block; bounds memory whatever the index size (default: 16 MB of rows).")
@click.option("--shard", "shards", multiple=True, type=InputPath(dir_okay=True),
              help="More index files (shards) searched together with INDEX. Repeatable.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Score each index file in a Ray task (the ray extra; alone: a local Ray on 127.0.0.1 only, 'auto' or "
                   "HOST:PORT: a cluster) and merge the top-k here; the hits are the same as without --ray.")
@common_options(json_help="Print JSON Lines on stdout: one JSON object per hit (schema: docs/schema/search.json), "
                          "in query order, then rank order.")
def command(index, queries, query_files, query_embeddings, k, metric, model_path, tokenizer_path, cache_dir, query_prefix, strict, rescore, block_rows,
            shards, ray_address, as_json, quiet, threads) -> None:
    """Exact top-k search of an index written by `embtool embed -o X.safetensors` (or .parquet, or a .npy
    matrix; a folder stands for the index shards in it, as `embed --ray` writes them),
    by blocked matrix multiplication over the memory-mapped file: an index larger than RAM works,
    and the result is always the exact one (recall 1.0).

    Output: TSV `query_no  rank  score  id  text` on stdout; --json gives JSON Lines, one JSON object
    per hit (not one per query), each with the same fields, the hit's index file and row, and
    "schema": "embtool.search/1". For l2 the score is the squared distance (smaller is closer).
    Ids are shown as the index stores them; ids that repeat across files are a warning.

    \b
    Example:
      embtool search docs.safetensors "how do I list files" -k 5
      embtool search docs.safetensors -q questions.txt --query-prefix "query: " --json
      embtool search part0.safetensors --shard part1.safetensors "a query"
    """
    # a leading QUERY that is an index file is an extra shard: `search a.safetensors b.safetensors "q"`
    queries = list(queries)
    extra = list(shards)
    while queries and ((queries[0].endswith((".safetensors", ".npy", ".parquet")) and Path(queries[0]).is_file())
                       or Path(queries[0]).is_dir()):
        extra.append(queries.pop(0))
    if not queries and not query_files and query_embeddings is None:
        if sys.stdin.isatty():
            raise click.UsageError("no queries: give them as arguments, with -q FILE, or with --query-embeddings")
        query_files = ("-",)
    hits_per_query = api.search([index, *extra], queries, query_files=list(query_files), query_embeddings=query_embeddings,
                                k=k, metric=metric, model=model_path, tokenizer=tokenizer_path, cache_dir=cache_dir, query_prefix=query_prefix,
                                strict=strict, rescore=rescore, block_rows=block_rows or 0, threads=threads, ray=ray_address,
                                warn=(lambda msg: None) if quiet else (lambda msg: click.echo(f"warning: {msg}", err=True)))
    query_texts = hits_per_query.query_texts
    out = sys.stdout
    for qi, hits in enumerate(hits_per_query):
        for rank, hit in enumerate(hits, 1):
            score, gid, text = hit
            if as_json:
                out.write(json.dumps({"schema": "embtool.search/1", "query_no": qi, "query": query_texts[qi] if query_texts else None,
                                      "rank": rank, "score": round(float(score), 6), "id": int(gid), "text": text,
                                      "file": hit.file, "row": hit.row}, ensure_ascii=False, allow_nan=False) + "\n")
            else:
                clean = text.replace("\t", " ").replace("\n", " ")
                out.write(f"{qi}\t{rank}\t{score:.6f}\t{gid}\t{clean}\n")
    out.flush()
