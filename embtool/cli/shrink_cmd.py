"""`embtool shrink`: trim to a corpus, then quantize to a size budget, measured on held-out text."""

from __future__ import annotations

import click

from embtool import api
from embtool.cli.options import (InputPath, common_options, emit_summary, force_option, human_bytes, model_argument, progress_bar,
                                 worst_lines)
from embtool.cli.quantize_cmd import BitsList, Size


def render(s: dict) -> str:
    lines = []
    for st in s["steps"]:
        if st["step"] == "trim-vocab":
            lines.append(f"trim-vocab   {st['vocab_before']:,} -> {st['vocab_after']:,} tokens, {human_bytes(st['bytes_after'])} ({st['seconds']} s)")
        else:
            lines.append(f"quantize     {st['bits_per_weight']:.2f} bits per weight ({', '.join(map(str, st['bits']))}-bit tensors, "
                         f"{st['method']}), {human_bytes(st['bytes_after'])} ({st['seconds']} s)")
    lines.append(f"bytes        {human_bytes(s['bytes_before'])} -> {human_bytes(s['bytes_after'])} ({100 * s['share']:.1f}%; "
                 f"budget {human_bytes(s['max_size'])})")
    e = s["eval"]
    lines.append(f"held-out     {e['texts']} texts of the corpus (kept aside), vs the original model: "
                 f"{100 * e['identical_tokenization']:.1f}% tokenized identically; cosine mean "
                 f"{e['cosine_mean']:.4f}, min {e['cosine_min']:.4f}; recall@10 {e['recall_at_10']:.3f}")
    lines += worst_lines(e)
    lines.append(f"wrote        {s['output']} ({s['seconds']} s)" if s.get("written") else "nothing written")
    return "\n".join(lines)


@click.command(name="shrink")
@model_argument
@click.option("-c", "--corpus", multiple=True, required=True, type=InputPath(),
              help="Texts like those the model will embed, one per line (or JSONL with --field); repeatable. Every 10th "
                   "line (up to --holdout) is kept aside to measure the result.")
@click.option("--field", default=None, help="Read JSONL corpora and take the text from this field.")
@click.option("--max-size", type=Size(), required=True, help="Budget for the weights file, e.g. 16MB.")
@click.option("--bits", type=BitsList(), default="2,4,8", show_default=True, help="Widths quantization may choose per tensor.")
@click.option("--group-size", type=click.IntRange(min=8), default=32, show_default=True, help="Values per quantization group.")
@click.option("--holdout", type=click.IntRange(min=2), default=300, show_default=True, help="Held-out corpus lines for the final measurement.")
@click.option("--prefix", "prefixes", multiple=True,
              help="Count the corpus as the model sees it, after this prefix (e.g. 'passage: '); default: the text alone "
                   "and after each of the model's prompts.")
@click.option("--eval-prefix", default=None, help="Prefix of the held-out texts (default: the model's document prompt).")
@click.option("--quick", is_flag=True, help="Plan the bits from Hessian-trace estimates with round-to-nearest: much faster, "
                                            "usually a little less faithful.")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=None,
              help="Fail (exit 3, the --json summary still printed, nothing written) when the mean over held-out texts of "
                   "the original-vs-shrunk embedding cosine is below this.")
@click.option("--min-cosine-min", type=click.FloatRange(-1, 1), default=None,
              help="Fail (exit 3, the --json summary still printed, nothing written) when the minimum over held-out texts "
                   "of the cosine (the worst text) is below this.")
@click.option("--min-recall", type=click.FloatRange(0, 1), default=None,
              help="Fail (exit 3, the --json summary still printed, nothing written) when recall@10 on the held-out texts "
                   "(the mean share of each text's 10 nearest held-out neighbours that the shrunk model keeps) is below this.")
@click.option("-o", "--output", required=True, help="Output model folder.")
@force_option
@common_options
def command(model, corpus, field, max_size, bits, group_size, holdout, prefixes, eval_prefix, quick, min_cosine, min_cosine_min,
            min_recall, output, force, as_json, quiet, threads) -> None:
    """The whole pipeline in one command: trim the vocabulary to the corpus' language, then, if the model is
    still over --max-size, quantize it with bits chosen per tensor to fit the budget while losing the least
    (measured on the corpus; GPTQ), and measure the result against the original model on held-out lines
    of the corpus. Prints what it chose and the fidelity; below --min-cosine / --min-recall nothing is written.

    \b
    Example:
      embtool shrink multilingual-e5-small/ -c fr.txt --max-size 16MB --min-cosine 0.98 -o e5-fr-16mb/
      embtool shrink all-mpnet-base-v2/ -c en.txt --max-size 60MB -o mpnet-en-60mb/ --json
    """
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(f"note: {msg}", err=True))
    with progress_bar(quiet, unit="B", desc="count") as bar:
        res = api.shrink(model, output, corpus=list(corpus), text_field=field, max_size=max_size, bits=bits, group_size=group_size,
                         holdout=holdout, prefixes=list(prefixes) or None, eval_prefix=eval_prefix, quick=quick,
                         min_cosine=min_cosine, min_cosine_min=min_cosine_min, min_recall=min_recall, force=force,
                         threads=threads, progress=bar, say=say, check=False)
    emit_summary(res.summary, as_json, quiet, render)
