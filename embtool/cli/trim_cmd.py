"""`embtool trim-vocab`: Vocabulary Trimming."""

from __future__ import annotations

import click

from embtool import api
from embtool.api import SCRIPTS
from embtool.cli.options import (InputPath, common_options, emit_summary, eval_options, eval_source, force_option, human_bytes,
                                 model_argument, progress_bar, worst_lines)


def render(s: dict) -> str:
    lines = [f"vocabulary   {s['vocab_before']:,} -> {s['vocab_after']:,} tokens"
             + (f" (embedding rows {s['embedding_rows_before']:,} -> {s['vocab_after']:,})" if s["embedding_rows_before"] != s["vocab_before"] else ""),
             f"parameters   {s['parameters_before']:,} -> {s['parameters_after']:,} ({100 * s['parameters_after'] / s['parameters_before']:.1f}%)"]
    after = s.get("bytes_after", s.get("bytes_after_estimate"))
    lines.append(f"bytes        {human_bytes(s['bytes_before'])} -> {human_bytes(after)}{' (estimate)' if 'bytes_after' not in s else ''}"
                 f" ({100 * after / s['bytes_before']:.1f}%)")
    if s.get("corpus_coverage") is not None:
        lines.append(f"corpus       {s['corpus_lines']:,} lines, {s['corpus_bytes'] / 1e6:.1f} MB, {s['corpus_tokens']:,} tokens "
                     f"[{s['counting']}]; kept tokens cover {100 * s['corpus_coverage']:.3f}% of them")
        if any(s.get("prefixes", [""])):
            lines.append(f"prefixes     counted as the model sees the texts: {', '.join(repr(p) for p in s['prefixes'])}")
    if s.get("extra"):
        x = s["extra"]
        rows = s.get("extra_rows")
        fit = (f"; they cover {100 * x['split_coverage']:.1f}% of what a held-out split of {x['split_texts']:,} corpus "
               f"texts needs beyond the others' tokens" if "split_coverage" in x else "")
        lines.append(f"extra        {x['single_characters'] + x['tokens']:,} tokens the corpus did not use ({x['single_characters']:,} "
                     f"single characters, {x['tokens']:,} of {x['candidates']:,} tokens of its characters{fit})"
                     + (f"; rows at {rows['bits']} bits" if rows else ""))
    if "eval" in s:
        e = s["eval"]
        pre = f" with prefix {s['eval_prefix']!r}" if s.get("eval_prefix") else ""
        lines.append(f"held-out     {e['texts']} texts{eval_source(e)}{pre}: {100 * e['identical_tokenization']:.1f}% tokenized identically, "
                     f"{100 * e['new_unknown_token_share']:.3f}% tokens newly unknown; embedding cosine mean {e['cosine_mean']:.5f}, "
                     f"min {e['cosine_min']:.5f}; recall@10 {e.get('recall@10', e.get('recall_at_10')):.3f}")
        lines += worst_lines(e)
    for n in s["notes"]:
        lines.append(f"note         {n}")
    lines.append(("dry run: nothing written" if s["dry_run"] else f"wrote        {s['output']}") + f" ({s['seconds']} s)")
    return "\n".join(lines)


@click.command(name="trim-vocab")
@model_argument
@click.option("-c", "--corpus", multiple=True, help="Text file(s) of the target language(s), one text per line ('-' = stdin). Repeatable.")
@click.option("--field", default=None, help="Read the corpus as JSONL and take this field.")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Keep the N most frequent corpus tokens.")
@click.option("--min-freq", type=click.IntRange(min=1), default=None, help="Keep tokens seen at least F times.")
@click.option("--coverage", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Keep the smallest set of tokens covering this share of corpus token occurrences (default 1.0: every token seen).")
@click.option("--keep", "keep_file", type=InputPath(), default=None, help="File of tokens (one per line) always kept.")
@click.option("--script", "scripts", default=None, help=f"Also keep tokens whose letters are in these Unicode scripts (comma-separated: {', '.join(SCRIPTS[:6])}, ...). Works without a corpus.")
@click.option("--extra", type=click.Choice(["auto", "all", "none"]), default=None,
              help="Also keep tokens the corpus did not use but other text of its language will: every single character "
                   "of the scripts it uses, and the model's most common tokens made of its characters (the model's own "
                   "evidence: Unigram scores, BPE merge ranks, WordPiece order). auto: as many as a held-out split of the "
                   "corpus (every 10th line) shows are needed; all; none: the corpus' tokens only. Default: auto, "
                   "none with --top/--min-freq/--coverage.")
@click.option("--extra-bits", type=click.Choice(["2", "4", "8", "32"]), default="2", show_default=True,
              help="Bits of the extra tokens' rows: packed after the table's own rows (a rare word keeps its token at a "
                   "fraction of a row's bytes); 32: full width like the others.")
@click.option("--prefix", "prefixes", multiple=True,
              help="Count the corpus as the model sees it, after this prefix (e.g. 'passage: '); its tokens are always kept. "
                   "Repeatable. Default: the text alone and after each of the model's prompts (config_sentence_transformers.json).")
@eval_options(prefix=False)
@click.option("--eval-prefix", default=None,
              help="Prefix for the held-out texts (default: the model's document prompt, else the first --prefix).")
@click.option("--dry-run", is_flag=True, help="Print what would be kept and the resulting size; write nothing.")
@click.option("-o", "--output", default=None, help="Output model folder.")
@force_option
@common_options
def command(model, corpus, field, top, min_freq, coverage, keep_file, scripts, extra, extra_bits, prefixes, evaluation, dry_run,
            output, force, as_json, quiet, threads) -> None:
    """Vocabulary Trimming (Ushio et al. 2023): keep only the tokens a language needs and slice the
    embedding matrix (and every tensor on the vocabulary axis) to them; ids become contiguous in
    their original order. WordPiece, BPE (byte-level or not) and Unigram tokenizers are rewritten so
    that every corpus text tokenizes exactly as before; special tokens are always kept.

    The corpus is streamed and counted with the model's own tokenizer. Without a selection flag
    every token the corpus uses is kept (--coverage 1.0).

    \b
    Example:
      embtool trim-vocab e5-small/ -c fr.txt -o e5-small-fr/ --eval fr-heldout.txt
      embtool trim-vocab e5-small/ --script Latin -o e5-small-latin/
      embtool trim-vocab e5-small/ -c fr.txt --coverage 0.9995 --dry-run
    """
    if not dry_run and not output:
        raise click.UsageError("give -o OUTPUT (or --dry-run)")
    with progress_bar(quiet, unit="B", desc="count") as bar:
        res = api.trim_vocab(model, output, corpus=list(corpus), text_field=field, top=top, min_freq=min_freq,
                             coverage=coverage, keep_file=keep_file, prefixes=list(prefixes) or None,
                             extra=extra, extra_bits=int(extra_bits),
                             eval_prefix=evaluation["eval_prefix"],  # None unless --eval-prefix
                             scripts=[s.strip() for s in scripts.split(",") if s.strip()] if scripts else [],
                             eval_file=evaluation["eval_file"], eval_limit=evaluation["eval_limit"],
                             min_cosine=evaluation["min_cosine"], min_cosine_min=evaluation["min_cosine_min"],
                             min_recall=evaluation["min_recall"], no_eval=evaluation["no_eval"],
                             force_unsupported=evaluation["force_unsupported"], dry_run=dry_run, force=force,
                             threads=threads, progress=bar, check=False)
    emit_summary(res.summary, as_json, quiet, render)
