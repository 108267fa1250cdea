"""`embtool shrink`: the whole pipeline in one command, to a size budget.

1. The corpus is split: every 10th non-empty line (up to --holdout lines) is kept aside as held-out text, the
   rest is the training text.
2. trim-vocab to the training text (every token it uses is kept, so it tokenizes exactly as before).
3. If the trimmed model is still over --max-size, quantize it with mixed precision to the budget: widths per
   tensor from --bits, chosen by the measured loss of the pooled embedding on the training text (GPTQ on
   the same text), never worse than the uniform width that fits (quantize's guard).
4. The result is measured against the ORIGINAL model on the held-out text (mean/min cosine, recall@10);
   below a --min-* gate nothing is written (exit 3). The output is published atomically; the steps'
   intermediate models live in a temporary folder that is always removed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from embtool.core.errors import BadUsage, InputError
from embtool.core.formats.record import provenance, write_model_record
from embtool.core.model import open_model
from embtool.core.st_config import counting_prefixes, eval_prefix_for
from embtool.core.texts import iter_texts
from embtool.core.writer import OutputFolder
from embtool.jobs.fidelity import compare, embed_both, gate, warn_if_low

HOLDOUT_EVERY = 10


@dataclass
class ShrinkRequest:
    model: str
    output: str | None
    corpus: list[str] = field(default_factory=list)
    text_field: str | None = None
    max_size: int | None = None  # bytes of the weights file
    bits: list[int] = field(default_factory=lambda: [2, 4, 8])
    group_size: int = 32
    holdout: int = 300  # held-out texts (every 10th line of the corpus) for the final measurement
    prefixes: list[str] | None = None  # trim: count the corpus after these prefixes (default: the model's prompts)
    eval_prefix: str | None = None  # None: the model's document prompt, else the first --prefix
    quick: bool = False  # plan bits from Hessian-trace estimates with round-to-nearest (minutes faster, less faithful)
    min_cosine: float | None = None
    min_cosine_min: float | None = None
    min_recall: float | None = None
    force: bool = False
    threads: int = 0


def _split_corpus(req: ShrinkRequest, folder: Path) -> tuple[Path, list[str], int]:
    """(training file, held-out texts, training lines), streaming the corpus once."""
    if any(c == "-" for c in req.corpus):
        raise BadUsage("shrink reads the corpus more than once: give files, not stdin")
    train = folder / "train.txt"
    held: list[str] = []
    n_train = 0
    with open(train, "w", encoding="utf-8", newline="\n") as f:
        k = 0
        for t in iter_texts((), req.corpus, req.text_field, skip_empty=True):
            t = t.replace("\n", " ")
            if not t.strip():
                continue
            k += 1
            if k % HOLDOUT_EVERY == 0 and len(held) < req.holdout:
                held.append(t)
            else:
                f.write(t + "\n")
                n_train += 1
    if n_train == 0:
        raise InputError("the corpus is empty")
    if len(held) < 2:
        raise InputError(f"the corpus is too small to keep held-out text aside ({k} lines; shrink keeps every "
                         f"{HOLDOUT_EVERY}th line, and needs at least 2)")
    return train, held, n_train


def run_shrink(req: ShrinkRequest, progress=None, say: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    from embtool.jobs.quantize import QuantRequest, run_quantize
    from embtool.jobs.trim import TrimRequest, run_trim

    t0 = time.perf_counter()
    if not req.corpus:
        raise BadUsage("shrink needs a corpus of the texts the model will embed: -c FILE")
    if req.max_size is None or req.max_size <= 0:
        raise BadUsage("shrink needs a size budget: --max-size SIZE (e.g. 16MB)")
    if req.holdout < 2:
        raise BadUsage("--holdout must be at least 2")
    orig = open_model(req.model, need_tokenizer=True)
    if orig.format != "safetensors":
        raise InputError(f"{req.model} is an ONNX model; shrink takes a safetensors model (trim-vocab and quantize "
                         "work on ONNX models one by one)")
    bytes_before = orig.weight_bytes()
    steps: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="embtool-shrink-"))
    try:
        train, held, n_train = _split_corpus(req, work)
        say(f"corpus: {n_train:,} training lines, {len(held)} held-out lines (every {HOLDOUT_EVERY}th)")
        eval_prefix = req.eval_prefix if req.eval_prefix is not None else eval_prefix_for(orig.st, counting_prefixes(orig.st, req.prefixes))
        t = time.perf_counter()
        trim = run_trim(TrimRequest(model=req.model, output=str(work / "trimmed"), corpus=[str(train)], prefixes=req.prefixes,
                                    no_eval=True, force=True, threads=req.threads), progress)
        steps.append({"step": "trim-vocab", "vocab_before": trim["vocab_before"], "vocab_after": trim["vocab_after"],
                      "bytes_after": trim["bytes_after"], "seconds": round(time.perf_counter() - t, 2)})
        say(f"trim-vocab: {trim['vocab_before']:,} -> {trim['vocab_after']:,} tokens, {trim['bytes_after'] / 1e6:.1f} MB "
            f"({steps[-1]['seconds']} s)")
        final = work / "trimmed"
        if trim["bytes_after"] > req.max_size:
            t = time.perf_counter()
            q = run_quantize(QuantRequest(model=str(final), output=str(work / "quantized"), bits=sorted(req.bits),
                                          group_size=req.group_size, max_size=req.max_size, calib=str(train),
                                          method="rtn" if req.quick else "auto",
                                          sensitivity="hessian" if req.quick else "measured", probes=1 if req.quick else 2,
                                          no_eval=True, force=True, threads=req.threads), None, say)
            mp = q.get("mixed_precision", {})
            widths = sorted({r["bits"] for r in mp.get("table", [])}) if mp.get("table") else sorted(req.bits)
            steps.append({"step": "quantize", "bits": widths, "bits_per_weight": q["bits_per_weight"], "method": q["method"],
                          "bytes_after": q["bytes_after"],
                          "seconds": round(time.perf_counter() - t, 2)})
            say(f"quantize: {q['bits_per_weight']:.2f} bits per weight ({', '.join(map(str, widths))}-bit tensors), "
                f"{q['bytes_after'] / 1e6:.1f} MB ({steps[-1]['seconds']} s)")
            final = work / "quantized"
        new = open_model(final)
        size = new.weight_bytes()
        if size > req.max_size:  # the budget counts the file's header too; a miss is a bug, never a silent one
            raise InputError(f"the shrunk model has {size:,} bytes, over --max-size {req.max_size:,}; nothing written")
        t = time.perf_counter()
        ev = compare(*embed_both(orig, new, held, req.threads, eval_prefix))
        ev.update({"source": "held-out corpus lines", "prefix": eval_prefix})
        warn_if_low(ev)
        summary: dict[str, Any] = {"model": str(req.model), "output": req.output, "max_size": req.max_size,
                                   "bytes_before": bytes_before, "bytes_after": size, "share": size / bytes_before,
                                   "steps": steps, "training_lines": n_train, "eval": ev,
                                   "eval_seconds": round(time.perf_counter() - t, 2)}
        say(f"held-out ({len(held)} texts): cosine mean {ev['cosine_mean']:.4f}, min {ev['cosine_min']:.4f}, "
            f"recall@10 {ev['recall@10']:.3f} vs the original")
        if not gate(summary, req):
            summary["seconds"] = round(time.perf_counter() - t0, 2)
            return summary
        with OutputFolder(req.output, req.force, inputs=[orig.root, *map(Path, req.corpus)]) as out:
            for p in sorted(final.iterdir()):
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, out.path / p.name)
            prov = provenance("shrink", {"corpus": req.corpus, "max_size": req.max_size, "bits": req.bits,
                                         "quick": req.quick}, orig, extra={"steps": [s["step"] for s in steps]})
            write_model_record(out, orig, prov, summary, carry=new)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary

