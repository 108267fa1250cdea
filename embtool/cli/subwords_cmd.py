"""`embtool init-subwords`: a model for a new tokenizer (OFA / FVT / random initialisation)."""

from __future__ import annotations

import click

from embtool import api
from embtool.cli.options import (InputPath, bytes_line, common_options, emit_summary, eval_line, eval_options, force_option,
                                 model_argument, progress_bar)


def render(s: dict) -> str:
    r, o = s["rows"], s["overlap"]
    n = s["vocab_after"]
    lines = [f"vocabulary   {s['vocab_before']:,} -> {n:,} tokens ({s['conventions']['source']} -> {s['conventions']['target']} markers)",
             f"rows         copied {r['copied']:,} ({o['exact']:,} exact, {o['case']:,} by case, {o['special']:,} special), "
             f"neighbours {r['neighbours']:,}, fvt {r['fvt']:,}, random {r['random']:,}"
             + (f", unused {r['unused']:,}" if r["unused"] else "") + f"  [--method {s['method']}]"]
    if "word_vectors" in s:
        w = s["word_vectors"]
        lines.append(f"word vectors {w['words']:,} words, dim {w['dim']} ({w['source']}); subwords with a vector: "
                     f"source {w['source_subwords_with_vector']:,}, target {w['target_subwords_with_vector']:,}; "
                     f"k={w['neighbors']}, τ={w['temperature']}")
    lines.append(f"embedding    {s['embedding_parameters_before']:,} -> {s['embedding_parameters_after']:,} parameters"
                 + (f" (factorized, rank {s['rank']})" if s.get("factorized") else ""))
    if s.get("dry_run"):
        lines += [f"note         {x}" for x in s["notes"]]
        lines.append(f"dry run: nothing written ({s['seconds']} s)")
        return "\n".join(lines)
    lines.append(bytes_line(s["bytes_before"], s["bytes_after"]))
    if "eval" in s:
        lines.append(eval_line(s["eval"], " vs the source model"))
    lines += [f"note         {x}" for x in s["notes"]]
    lines.append(f"wrote        {s['output']} ({s['seconds']} s)")
    return "\n".join(lines)


@click.command(name="init-subwords")
@model_argument(tokenizer_flag="--source-tokenizer")
@click.option("--tokenizer", "tokenizer", required=True, type=InputPath(dir_okay=True, hub_id=True),
              help="The new tokenizer.json (or a folder holding it, with its tokenizer_config.json, or a Hub id).")
@click.option("--method", type=click.Choice(["ofa", "fvt", "random"]), default=None,
              help="ofa: neighbours by word vectors; fvt: mean of the source pieces; random: N(mean, std). "
                   "Shared tokens are copied by every method. Default: ofa with --word-vectors, else fvt.")
@click.option("--word-vectors", default=None, metavar="FILE|auto",
              help="Word vectors for ofa: word2vec text (.txt/.vec), .npy (+ --word-vocab), an `embtool embed` "
                   ".safetensors of words, or 'auto': embed the --corpus words with MODEL itself.")
@click.option("--word-vocab", type=InputPath(), default=None,
              help="Vocabulary of a .npy word-vector matrix (one word per line; default: beside it as .vocab/.txt).")
@click.option("-c", "--corpus", multiple=True, help="With --word-vectors auto: text file(s) whose most frequent words are embedded.")
@click.option("--max-words", type=click.IntRange(min=1), default=50000, show_default=True,
              help="Use at most this many word vectors (the first of a file; the most frequent corpus words).")
@click.option("--neighbors", type=click.IntRange(min=1), default=10, show_default=True, help="ofa: k most similar source subwords.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="ofa: softmax temperature τ of the neighbour weights.")
@click.option("--center/--no-center", default=True, show_default=True,
              help="ofa: subtract the mean word vector before comparing (sentence-embedding word vectors are "
                   "anisotropic); --no-center is the paper's plain cosine.")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="Write the table factorized, F (V×k) · P (k×hidden): OFA's parameter saving.")
@click.option("--rank-basis", type=click.Choice(["output", "source"]), default="output", show_default=True,
              help="With --rank: factorize the new table itself (least error), or build its rows as coordinates "
                   "in the source table's rank-k factorization (OFA's recipe).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random rows.")
@eval_options()
@click.option("--dry-run", is_flag=True, help="Print the overlap and how each row would be made; write nothing.")
@click.option("-o", "--output", default=None, help="Output model folder.")
@force_option
@common_options
def command(model, tokenizer, method, word_vectors, word_vocab, corpus, max_words, neighbors, temperature, center, rank, rank_basis, seed,
            evaluation, dry_run, output, force, as_json, quiet, threads) -> None:
    """Give MODEL a new tokenizer: tokens both vocabularies share (after normalising ▁/##/Ġ markers
    and case; special tokens by role, <s> ~ [CLS]) copy their row; every other row is initialised
    by OFA (Liu et al. 2024: the softmax(sim/τ)-weighted sum of the rows of the k source subwords
    most similar in a word-vector space), FVT (the mean of the rows of the pieces the old tokenizer
    splits the token into), or drawn from N(mean, std) of the source rows. OFA falls back to FVT for
    tokens without a word vector, FVT to random for tokens with no source piece.

    Word vectors can come from the model itself: with a multilingual model, `--word-vectors auto
    -c corpus.txt` embeds the corpus' most frequent words, giving vectors aligned with the model's
    own space (or run `embtool embed MODEL -i words.txt -o words.vec` once and pass words.vec).

    \b
    Example:
      embtool init-subwords e5-small/ --tokenizer fr-32k/tokenizer.json -o e5-fr/
      embtool init-subwords e5-small/ --tokenizer fr-32k/ --word-vectors auto -c fr.txt \\
          --rank 100 -o e5-fr-ofa/ --eval fr-heldout.txt --eval-prefix "query: "
    """
    if not dry_run and not output:
        raise click.UsageError("give -o OUTPUT (or --dry-run)")
    if dry_run and evaluation["eval_file"]:
        raise click.UsageError("--eval needs an output model; it does not go with --dry-run")
    if rank is None and rank_basis != "output":
        raise click.UsageError("--rank-basis goes with --rank")
    with progress_bar(quiet or word_vectors != "auto", unit="word", desc="word vectors") as bar:
        res = api.init_subwords(model, output, tokenizer=tokenizer, method=method, word_vectors=word_vectors,
                                word_vocab=word_vocab, corpus=list(corpus), max_words=max_words, neighbors=neighbors,
                                temperature=temperature, center=center, rank=rank, rank_basis=rank_basis, seed=seed,
                                **evaluation, force=force, threads=threads, dry_run=dry_run, progress=bar, check=False)
    emit_summary(res.summary, as_json, quiet, render)
