"""`make bench`: every benchmark, embtool and its peers measured in the same run; writes docs/benchmarks.md
and the plots in docs/.

    python tools/bench.py                 # everything (about 100 minutes on 2 cores)
    python tools/bench.py --only quantize # sections: embed, search, trim, quantize, mixed, factorize, init, mpnet, shrink, ray, fused

Every measurement runs in its own process under /usr/bin/time (wall time and peak RSS). Peers run with a
separate venv (~/.cache/embtool-peers-venv: torch 2.13.0 CPU, sentence-transformers, faiss-cpu, onnx_ir),
created here if missing; they are never embtool dependencies. Results: .bench/results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
import realmodels  # noqa: E402  (the real-model fetcher is test infrastructure: tests/realmodels.py)
from embtool import api  # noqa: E402  (the public API only)

WORK = ROOT / ".bench"
PEERS = Path(os.environ.get("EMBTOOL_PEERS_VENV", Path.home() / ".cache" / "embtool-peers-venv"))
PY = sys.executable
THREADS = "2"
RESULTS: dict = {}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list, env: dict | None = None) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS MB) of one process."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *map(str, cmd)], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-2000:]}")
    rss = int(r.stderr.strip().splitlines()[-1]) / 1024
    return r.stdout, wall, rss


def embtool(*args) -> tuple[dict, float, float]:
    out, wall, rss = timed([PY, "-m", "embtool", *args])
    lines = out.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), wall, rss


# onnxruntime (+ onnx_ir, which its quantizers import) runs onnxruntime's own quantizers as a peer.
PEER_PACKAGES = ["sentence-transformers", "transformers", "faiss-cpu", "onnx", "onnxruntime", "onnx_ir"]


def peers_python() -> str:
    """The peers' venv, created (or completed, when an earlier creation was interrupted) on first use; a stamp
    file names what was installed, so a change of PEER_PACKAGES installs the difference."""
    py = PEERS / "bin" / "python"
    stamp = PEERS / ".embtool-peers"
    want = "torch==2.13.0 " + " ".join(PEER_PACKAGES)
    if not py.exists() or not stamp.exists() or stamp.read_text() != want:
        log(f"preparing the peers venv {PEERS}: {want}")
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        stamp.write_text(want)
    return str(py)


RUNS = int(os.environ.get("EMBTOOL_BENCH_RUNS", "3"))


def alternate(**measures) -> dict[str, list[dict]]:
    """Run each measurement RUNS times, interleaved (A B C A B C ...), so that the drift of a shared machine
    hits every contender alike. Each measure returns (stdout JSON, wall, RSS) as `timed` does; the result is,
    per measure, the list of its JSON objects with `wall_s` and `rss_mb` added."""
    out: dict[str, list[dict]] = {k: [] for k in measures}
    for _ in range(RUNS):
        for k, f in measures.items():
            stdout, wall, rss = f()
            lines = stdout.strip().splitlines()
            out[k].append({**(json.loads(lines[-1]) if lines else {}), "wall_s": wall, "rss_mb": rss})
    return out


def median_of(runs: list[dict]) -> dict:
    """Per numeric key, the median over runs (other keys from the first run)."""
    m = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            m[k] = float(np.median([r[k] for r in runs]))
    return m


def peer(*args) -> tuple[dict, float, float]:
    out, wall, rss = timed([peers_python(), ROOT / "tools" / "bench_peers.py", *args], env={"HF_HUB_OFFLINE": "1"})
    return json.loads(out.strip().splitlines()[-1]), wall, rss


def split(lang: str) -> tuple[list[str], list[str]]:
    return api.sample_corpus(lang, "train"), api.sample_corpus(lang, "heldout")


def write_lines(name: str, lines: list[str]) -> Path:
    p = WORK / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def worker(name: str, *args: str) -> None:
    """Measurements that must run in a fresh embtool process (started by `timed`)."""
    if name == "embed":  # model, texts, batch, sort
        t0 = time.perf_counter()
        enc = api.Encoder(args[0], batch_size=int(args[2]) or None, threads=int(THREADS), sort=args[3] == "1")
        texts = Path(args[1]).read_text(encoding="utf-8").splitlines()
        t1 = time.perf_counter()
        enc.embed(texts)
        t2 = time.perf_counter()
        print(json.dumps({"load_s": t1 - t0, "encode_s": t2 - t1, "texts_per_s": len(texts) / (t2 - t1),
                          "tokens": enc.stats.tokens, "padding": enc.stats.padded_tokens}))
    elif name == "search":  # index(es, comma-separated), queries.npy, k, rescore (-1: default), single-query count, ids out
        files = args[0].split(",")
        k, rescore, single = int(args[2]), int(args[3]), int(args[4])
        opts = {"k": k, "rescore": None if rescore < 0 else rescore, "threads": int(THREADS)}
        t0 = time.perf_counter()
        hits = api.search(files, query_embeddings=args[1], **opts)  # what `embtool search --query-embeddings` runs
        dt = time.perf_counter() - t0
        np.save(args[5], np.array([[h[1] for h in row] for row in hits], dtype=np.int64))
        out = {"search_s": dt}
        if single > 0:
            q = np.load(args[1])
            lat = []
            one = Path(args[5]).with_name("search-one-q.npy")
            for r in range(single):
                np.save(one, q[r:r + 1])
                t0 = time.perf_counter()
                api.search(files, query_embeddings=str(one), **opts)
                lat.append(time.perf_counter() - t0)
            out["single_p50_s"] = float(np.median(lat))
        print(json.dumps(out))
    elif name == "numpy-search":  # index.npy, queries.npy, k
        X = np.load(args[0])
        q = np.load(args[1])
        t0 = time.perf_counter()
        s = q @ X.T
        part = np.argpartition(-s, int(args[2]), axis=1)[:, : int(args[2])]
        np.take_along_axis(s, part, 1)
        print(json.dumps({"search_s": time.perf_counter() - t0}))
    else:
        raise SystemExit(f"unknown worker {name}")


# ---------------------------------------------------------------------------------------------
def bench_embed() -> None:
    """embtool vs sentence-transformers vs an independent onnxruntime loop, alternating, RUNS runs each, medians."""
    train, _ = split("en")
    rows = []
    # all-mpnet-base-v2 (110M parameters, about 5x MiniLM's work per text) on the first 500 of the same paragraphs
    for name, folder, n in (("all-MiniLM-L6-v2", realmodels.minilm(), 2000), ("multilingual-e5-small", realmodels.e5_small(), 2000),
                            ("all-mpnet-base-v2", realmodels.mpnet(), 500)):
        texts = write_lines(f"embed-en-{n}.txt", train[:n])
        portable = WORK / f"{name}-portable-onnx"
        if not portable.exists():
            embtool("export-onnx", folder, "--portable", "-o", portable, "--quiet")
        max_len = str(api.Encoder(folder).max_length)  # the loop truncates where the model does
        runs = alternate(
            embtool=lambda: timed([PY, __file__, "--worker", "embed", folder, texts, "0", "1"]),  # embtool's default batching
            st=lambda: timed([peers_python(), ROOT / "tools" / "bench_peers.py", "st-embed", folder, texts, THREADS, "32"],
                             env={"HF_HUB_OFFLINE": "1"}),
            loop=lambda: timed([peers_python(), ROOT / "tools" / "bench_peers.py", "ort-loop", portable / "model.onnx",
                                folder / "tokenizer.json", texts, THREADS, "32", max_len]))
        e, st, loop = (median_of(runs[k]) for k in ("embtool", "st", "loop"))
        log(f"embed {name}: embtool {e['texts_per_s']:.1f}/s, st {st['texts_per_s']:.1f}/s, ORT loop {loop['texts_per_s']:.1f}/s "
            f"(medians of {RUNS})")
        rows.append({"model": name, "texts": n, "runs": RUNS, "embtool_tps": e["texts_per_s"], "embtool_rss": e["rss_mb"],
                     "embtool_load_s": e["load_s"], "naive_tps": loop["texts_per_s"], "naive_rss": loop["rss_mb"],
                     "st_tps": st["texts_per_s"], "st_rss": st["rss_mb"], "st_load_s": st["load_s"],
                     "ratio_runs": [a["texts_per_s"] / b["texts_per_s"] for a, b in zip(runs["embtool"], runs["st"])],
                     "tokens": e["tokens"], "padding_sorted": e["padding"], "versions": st["versions"],
                     "ort_version": loop["onnxruntime"]})
    RESULTS["embed"] = rows


SEARCH_SINGLE = 20  # queries sent one at a time for the latency p50


def _current_int8(path: Path) -> bool:
    """An int8 index as embtool writes it today (centred codes with their stored norms), not one left by an older run."""
    ix = api.open_index(path)
    return ix.int8_mean is not None and ix.int8_sqnorms is not None


def _search_files(n: int, d: int) -> dict[str, Path]:
    """n x d (1M x 384) random unit vectors as the float32 .npy (for faiss) and embtool indexes: float32, int8, binary with
    int8 rescoring codes (written by embtool's own index writer); the binary bits also as .npy for IndexBinaryFlat."""
    rng = np.random.default_rng(0)
    tag = f"search-{n}x{d}"
    files = {"npy": WORK / f"{tag}.npy", "float32": WORK / f"{tag}-float32.safetensors", "int8": WORK / f"{tag}-int8.safetensors",
             "binary": WORK / f"{tag}-binary.safetensors", "bits": WORK / f"{tag}-bits.npy"}
    if all(f.exists() for f in files.values()) and _current_int8(files["int8"]):
        return files
    X = np.lib.format.open_memmap(files["npy"], mode="w+", dtype=np.float32, shape=(n, d))
    for r0 in range(0, n, 100_000):
        b = rng.standard_normal((min(100_000, n - r0), d)).astype(np.float32)
        X[r0 : r0 + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    X.flush()
    for prec, extra in (("float32", {}), ("int8", {}), ("binary", {"keep_int8": True, "binary_code": "centred"})):
        api.write_embeddings(files[prec], X, [""] * n, precision=prec, metadata={"normalize": "true"}, force=True, **extra)
    np.save(files["bits"], np.asarray(api.open_index(files["binary"]).emb))
    return files


def _recall(ids: np.ndarray, ref: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, ref)]))


def _search_speed(res: dict) -> None:
    n, d, k = res["n"], res["d"], res["k"]
    files = _search_files(n, d)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((res["queries"], d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qf = WORK / "search-q.npy"
    np.save(qf, q)
    np.save(WORK / "search-q-bits.npy", api.open_index(files["binary"]).query_bits(q))  # the queries' bits as embtool takes them
    single = str(SEARCH_SINGLE)

    def ours(name, index, rescore):
        return lambda: timed([PY, __file__, "--worker", "search", index, qf, k, rescore, single, WORK / f"ids-{name}.npy"])

    def faiss(name, *args):
        n_single = "0" if name.startswith("whole_") else single
        return lambda: timed([peers_python(), ROOT / "tools" / "bench_peers.py", *args, n_single, WORK / f"ids-{name}.npy"])

    def cli(index):  # a whole `embtool search` process, as a user runs it
        return lambda: timed([PY, "-m", "embtool", "search", index, "--query-embeddings", qf, "-k", k, "--rescore", "0",
                              "--threads", THREADS, "--json", "--quiet"])

    # alternating embtool and its peer, RUNS runs each; search time only (index opened or loaded before timing), and
    # whole processes (start, load, search, print): the goals are stated for whole processes
    runs = alternate(
        whole_float=cli(files["float32"]),
        whole_faiss_tuned=faiss("whole_faiss_tuned", "faiss", files["npy"], qf, k, THREADS, 20),
        whole_int8=cli(files["int8"]),
        whole_binary=cli(files["binary"]),
        whole_faiss_binary=faiss("whole_faiss_binary", "faiss-binary", files["bits"], WORK / "search-q-bits.npy", k, THREADS),
        float=ours("float", files["float32"], 0),
        faiss_default=faiss("faiss_default", "faiss", files["npy"], qf, k, THREADS, 0),
        faiss_tuned=faiss("faiss_tuned", "faiss", files["npy"], qf, k, THREADS, 20),
        int8=ours("int8", files["int8"], 0),
        binary=ours("binary", files["binary"], 0),
        faiss_binary=faiss("faiss_binary", "faiss-binary", files["bits"], WORK / "search-q-bits.npy", k, THREADS),
        binary_rescore=ours("binary_rescore", files["binary"], -1),
    )
    for name in [n for n in runs if n.startswith("whole_")]:
        r = runs.pop(name)
        res[name] = {"wall_s": float(np.median([x["wall_s"] for x in r])), "runs_s": [x["wall_s"] for x in r]}
    ref = np.load(WORK / "ids-float.npy")
    for name, r in runs.items():
        m = median_of(r)
        ids = np.load(WORK / f"ids-{name}.npy")
        res[name] = {"search_s": m["search_s"], "single_p50_s": m.get("single_p50_s"), "rss_mb": m["rss_mb"],
                     "runs_s": [x["search_s"] for x in r], "recall@10": _recall(ids, ref), "version": m.get("version")}
    ref_bits = np.load(WORK / "ids-faiss_binary.npy")  # Hamming top-10 must agree with IndexBinaryFlat (up to ties)
    res["binary"]["agreement_with_faiss_binary"] = _recall(np.load(WORK / "ids-binary.npy"), ref_bits)
    for p in ("float32", "int8", "binary"):
        res[p if p != "float32" else "float"]["index_gb"] = files[p].stat().st_size / 1e9
    res["binary"]["scan_gb"] = n * d / 8 / 1e9
    log(f"search: float {res['float']['search_s']:.2f}s vs faiss tuned {res['faiss_tuned']['search_s']:.2f}s; binary "
        f"{res['binary']['search_s']:.2f}s vs IndexBinaryFlat {res['faiss_binary']['search_s']:.2f}s (medians of {RUNS})")


def _search_recall(res: dict) -> None:
    """recall@10 against the float index on real embeddings, through `embtool search`: 6,000 paragraphs and 300
    half-paragraph queries (the first half of the words of every 20th paragraph)."""
    rows = []
    for name, folder, lang, pp, qp in (("multilingual-e5-small", realmodels.e5_small(), "fr", "passage: ", "query: "),
                                       ("all-MiniLM-L6-v2", realmodels.minilm(), "en", "", "")):
        docs = api.sample_corpus(lang, "all", limit=6000)
        queries = [" ".join(t.split()[: max(1, len(t.split()) // 2)]) for t in docs[::20][:300]]
        base = WORK / f"recall-{name}"
        fl = Path(f"{base}-float32.safetensors")
        qf = Path(f"{base}-queries.npy")
        if not fl.exists():
            embtool("embed", folder, "-i", write_lines(f"recall-{name}-docs.txt", docs), "--prefix", pp, "-o", fl, "--quiet",
                    "--threads", THREADS)
        if not qf.exists():
            embtool("embed", folder, "-i", write_lines(f"recall-{name}-q.txt", queries), "--prefix", qp, "-o", qf, "--quiet",
                    "--threads", THREADS)
        src = api.open_index(fl)
        X = np.asarray(src.emb)
        variants = {"int8": ("int8", {"keep_float": True}), "binary": ("binary", {"keep_float": True}),
                    "binary-int8": ("binary", {"keep_int8": True})}
        for v, (prec, extra) in variants.items():
            out = Path(f"{base}-{v}.safetensors")
            if not out.exists() or (prec == "int8" and not _current_int8(out)):
                api.write_embeddings(out, X, [src.text(i) for i in range(len(src))], precision=prec, **extra, force=True,
                                         metadata={k: src.meta[k] for k in ("model", "pooling", "normalize", "prefix", "max_length")
                                                   if k in src.meta})

        def search(index, *extra):
            out, _, _ = timed([PY, "-m", "embtool", "search", index, "--query-embeddings", qf, "-k", "10", "--json", "--quiet", *extra])
            hits = [json.loads(x) for x in out.splitlines()]
            return np.array([[h["id"] for h in hits if h["query_no"] == i] for i in range(len(queries))])

        ref = search(fl)
        n = len(X)
        row = {"model": name, "rows": n, "queries": len(queries), "default_depth": api.rescore_depth(n, 10, "binary"),
               "mean_pairwise_cosine": float(np.linalg.norm(X.astype(np.float64).mean(0)) ** 2),
               "int8": _recall(search(f"{base}-int8.safetensors", "--rescore", "0"), ref),
               "int8_rescore": _recall(search(f"{base}-int8.safetensors"), ref),
               "binary": _recall(search(f"{base}-binary.safetensors", "--rescore", "0"), ref),
               "binary_rescore100": _recall(search(f"{base}-binary.safetensors", "--rescore", "100"), ref),
               "binary_rescore": _recall(search(f"{base}-binary.safetensors"), ref),
               "binary_int8_rescore": _recall(search(f"{base}-binary-int8.safetensors"), ref)}
        log(f"search recall {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
        rows.append(row)
    res["recall"] = rows


def bench_search() -> None:
    res = {"n": int(os.environ.get("EMBTOOL_BENCH_SEARCH_ROWS", 1_000_000)), "d": 384, "k": 10, "queries": 100, "runs": RUNS}
    _search_speed(res)
    _search_recall(res)
    RESULTS["search"] = res


def bench_trim() -> None:
    e5 = realmodels.e5_small()
    rows = []
    for lang in ("fr", "es", "pl"):
        train, held = split(lang)
        tr = write_lines(f"trim-{lang}-train.txt", train)
        he = write_lines(f"trim-{lang}-held.txt", held[:300])
        s, wall, rss = embtool("trim-vocab", e5, "-c", tr, "-o", WORK / f"e5-{lang}", "--force", "--json", "--quiet")
        ev, _, _ = embtool("trim-vocab", e5, "-c", tr, "-o", WORK / f"e5-{lang}", "--force", "--json", "--quiet", "--eval", he,
                           "--eval-limit", "300")
        rows.append({"setting": f"{lang} corpus (training split)", "vocab_after": s["vocab_after"], "bytes_before": s["bytes_before"],
                     "bytes_after": s["bytes_after"], "params_after": s["parameters_after"], "wall_s": wall, "rss_mb": rss,
                     "count_mb_s": s["corpus_bytes"] / 1e6 / s["count_seconds"], "corpus_mb": s["corpus_bytes"] / 1e6,
                     "eval": ev["eval"], "lang": lang})
    _, held = split("fr")
    he = write_lines("trim-fr-held.txt", held[:300])
    s, wall, rss = embtool("trim-vocab", e5, "--script", "Latin", "-o", WORK / "e5-latin", "--force", "--json", "--quiet")
    s["eval"] = embtool("trim-vocab", e5, "--script", "Latin", "-o", WORK / "e5-latin", "--force", "--json", "--quiet",
                        "--eval", he, "--eval-limit", "300")[0]["eval"]
    rows.append({"setting": "--script Latin (no corpus)", "vocab_after": s["vocab_after"], "bytes_before": s["bytes_before"],
                 "bytes_after": s["bytes_after"], "params_after": s["parameters_after"], "wall_s": wall, "rss_mb": rss,
                 "eval": s["eval"], "lang": "fr"})
    log("trim: " + ", ".join(f"{r['setting']}: {r['vocab_after']} tokens" for r in rows))
    RESULTS["trim"] = rows


def _fidelity(ref_model: Path, model: Path, held: Path, prefix: str = "") -> dict:
    f = api.compare_models(ref_model, model, held, prefix=prefix, threads=int(THREADS))  # held: at most 1,000 lines
    return {**f, "recall@10": f["recall_at_10"]}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model."))


def bench_quantize() -> None:
    minilm = realmodels.minilm()
    train, held = split("en")
    calib = write_lines("q-calib.txt", train[:256])
    he = write_lines("q-held.txt", held[:1000])
    fp32 = _size(minilm)
    rows = []
    portable = WORK / "all-MiniLM-L6-v2-portable-onnx"
    if not portable.exists():
        embtool("export-onnx", minilm, "--portable", "-o", portable, "--quiet")
    for label, args in (("onnxruntime quantize_dynamic int8 per-tensor", ("ort-dynamic", "0")),
                        ("onnxruntime quantize_dynamic int8 per-channel", ("ort-dynamic", "1")),
                        ("onnxruntime MatMulNBits 4-bit block 32 (+Gather)", ("ort-nbits", "32")),
                        ("onnxruntime MatMulNBits 4-bit block 128 (+Gather)", ("ort-nbits", "128"))):
        out = WORK / ("q-" + "".join(c for c in label if c.isalnum()))
        out.mkdir(exist_ok=True)
        for f in ("tokenizer.json", "config.json", "modules.json", "sentence_bert_config.json"):
            if (portable / f).exists():
                (out / f).write_bytes((portable / f).read_bytes())
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_bytes((portable / "1_Pooling" / "config.json").read_bytes())
        r, wall, rss = peer(args[0], portable / "model.onnx", out / "model.onnx", args[1])
        f = _fidelity(minilm, out, he)
        rows.append({"method": label, "bytes": _size(out), "share": _size(out) / fp32, **f, "seconds": r["seconds"]})
        log(f"quantize {label}: {rows[-1]['share']:.3f} cos {f['cosine_mean']:.4f}")
    # embtool's rows at equal or smaller size than onnxruntime's: the mixed-precision budget is the measured size
    # of onnxruntime's 4-bit block-32 model (weights and graph), not a fixed share of fp32
    ort4 = next(r["bytes"] for r in rows if r["method"].startswith("onnxruntime MatMulNBits 4-bit block 32"))
    runs = [("embtool 8-bit g32", ["--bits", "8"]),
            ("embtool 4-bit g32 (default: GPTQ, built-in sample)", ["--bits", "4"]),
            ("embtool 4-bit g32 RTN (no data)", ["--bits", "4", "--method", "rtn"]),
            ("embtool 4-bit g128 RTN (no data)", ["--bits", "4", "--group-size", "128", "--method", "rtn"]),
            ("embtool 4-bit g32 GPTQ --calib", ["--bits", "4", "--calib", calib]),
            ("embtool 2-bit g32 GPTQ --calib", ["--bits", "2", "--calib", calib]),
            ("embtool mixed {2,4,8} --calib, onnxruntime 4-bit size", ["--bits", "2,4,8", "--max-size", str(ort4), "--calib", calib]),
            ("embtool mixed {2,3,4,8} --calib, 3 bits", ["--bits", "2,3,4,8", "--target-bits", "3", "--calib", calib])]
    for label, args in runs:
        out = WORK / ("q-" + "".join(c for c in label if c.isalnum()))
        s, wall, rss = embtool("quantize", minilm, *args, "-o", out, "--force", "--json", "--quiet")
        f = _fidelity(minilm, out, he)
        rows.append({"method": label, "bytes": _size(out), "share": _size(out) / fp32, **f, "seconds": wall})
        log(f"quantize {label}: {rows[-1]['share']:.3f} cos {f['cosine_mean']:.4f}")
    RESULTS["quantize"] = {"fp32_bytes": fp32, "onnxruntime_4bit_bytes": ort4, "rows": rows}
    # quantize time, size and embed throughput of q4 vs float, both models
    texts = write_lines("embed-en-2000.txt", train[:2000])
    speed = []
    for name, folder in (("all-MiniLM-L6-v2", minilm), ("multilingual-e5-small", realmodels.e5_small())):
        out = WORK / f"{name}-q4"
        s, wall, rss = embtool("quantize", folder, "--bits", "4", "-o", out, "--force", "--json", "--quiet")
        tf = json.loads(timed([PY, __file__, "--worker", "embed", folder, texts, "32", "1"])[0])["texts_per_s"]
        tq = json.loads(timed([PY, __file__, "--worker", "embed", out, texts, "32", "1"])[0])["texts_per_s"]
        speed.append({"model": name, "quantize_s": wall, "quantize_rss_mb": rss, "bytes_before": s["bytes_before"],
                      "bytes_after": s["bytes_after"], "float_tps": tf, "q4_tps": tq})
    RESULTS["quantize_speed"] = speed


def bench_mixed() -> None:
    """Issue 7: at equal bytes, Hessian-aware bits vs bits by position and by weight magnitude."""
    minilm = realmodels.minilm()
    train, held = split("en")
    calib = write_lines("q-calib.txt", train[:256])
    he = write_lines("q-held.txt", held[:1000])
    tensors = {t.name: t for t in api.quantizable_tensors(minilm)}
    names = list(tensors)
    emb = next((t.name for t in tensors.values() if t.token_table), None)
    t0 = time.perf_counter()
    s, wall, rss = embtool("quantize", minilm, "--bits", "2,4,8", "--target-bits", "3", "--calib", calib, "--sensitivity", "hessian",
                           "-o", WORK / "mixed-hessian", "--force", "--json", "--quiet")
    plan = {r["tensor"]: r["bits"] for r in s["mixed_precision"]["per_tensor"]}
    budget = s["mixed_precision"]["budget_bytes"]
    rows = [{"method": "Hessian-aware (embtool --target-bits 3)", "bytes": s["bytes_after"], **_fidelity(minilm, WORK / "mixed-hessian", he),
             "calibration_s": s["mixed_precision"]["seconds"]}]
    def cost(p):
        return sum(api.quantized_bytes(tensors[k].shape, p[k], 32) for k in names)

    # position: the first layers get more bits than the last, filled greedily to the same budget
    order = sorted(names, key=lambda k: (k != emb, int(k.split("layer.")[1].split(".")[0]) if "layer." in k else 99))
    pos = {k: 2 for k in names}
    for k in order:
        for b in (4, 8):
            trial = {**pos, k: b}
            if cost(trial) <= budget:
                pos = trial
    weights = api.open_model(minilm).weights
    mag_order = sorted(names, key=lambda k: -float(np.abs(weights.get(k)).mean()))
    mag = {k: 2 for k in names}
    for k in mag_order:
        for b in (4, 8):
            trial = {**mag, k: b}
            if cost(trial) <= budget:
                mag = trial
    s, wall, rss = embtool("quantize", minilm, "--bits", "2,4,8", "--target-bits", "3", "--calib", calib,
                           "-o", WORK / "mixed-measured", "--force", "--json", "--quiet")
    rows.append({"method": "measured loss per tensor (embtool default)", "bytes": s["bytes_after"],
                 **_fidelity(minilm, WORK / "mixed-measured", he), "calibration_s": s["mixed_precision"]["seconds"]})
    for label, p in (("bits by position (early layers first)", pos), ("bits by weight magnitude", mag)):
        out = WORK / ("mixed-" + label.split()[2])
        r = api.quantize(minilm, out, bits=[2, 4, 8], plan=p, force=True, no_eval=True)
        rows.append({"method": label, "bytes": r.bytes_after, **_fidelity(minilm, out, he)})
    RESULTS["mixed"] = {"rows": rows, "plan_hessian": plan, "wall_s": time.perf_counter() - t0}
    log("mixed: " + ", ".join(f"{r['method']}: {r['cosine_mean']:.4f}" for r in rows))


def bench_factorize() -> None:
    rows = []
    for name, folder, lang, prefix in (("multilingual-e5-small", realmodels.e5_small(), "fr", "passage: "),
                                       ("all-MiniLM-L6-v2", realmodels.minilm(), "en", "")):
        train, held = split(lang)
        he = write_lines(f"f-held-{lang}.txt", held[:300])
        tr = write_lines(f"f-train-{lang}.txt", train)
        # plain (the whole table's spectrum) at every rank; weighted by the training split's token counts (--corpus)
        for k, weighting in [(k, "plain") for k in (32, 64, 128, 192, 256)] + [(k, "corpus") for k in (64, 128, 192)]:
            out = WORK / f"f-{name}-{k}"
            extra = ("-c", tr) if weighting == "corpus" else ()
            s, wall, rss = embtool("factorize", folder, "--rank", k, *extra, "-o", out, "--force", "--json", "--quiet",
                                   "--eval", he, "--eval-limit", "300", "--eval-prefix", prefix)
            # time and memory without the evaluation (the weighted rows: the factorize time of the run above)
            s2, wall2, rss2 = (embtool("factorize", folder, "--rank", k, "-o", out, "--force", "--json", "--quiet")
                               if weighting == "plain" else (s, None, None))
            rows.append({"model": name, "rank": k, "weighting": weighting, "rel_error": s["rel_frobenius_error"], "energy": s["energy"],
                         "cosine": s["eval"]["cosine_mean"], "recall@10": s["eval"]["recall_at_10"],
                         "params_share": s["embedding_parameters_after"] / s["embedding_parameters_before"],
                         "bytes_after": s["bytes_after"], "bytes_before": s["bytes_before"], "factorize_s": s2["factorize_seconds"],
                         "wall_s": wall2, "rss_mb": rss2})
            log(f"factorize {name} k={k} {weighting}: err {s['rel_frobenius_error']:.3f} cos {s['eval']['cosine_mean']:.4f}")
    RESULTS["factorize"] = rows


def bench_init() -> None:
    """Issue 9: multilingual-e5-small given a new French Unigram tokenizer, initialised by random / FVT / OFA."""
    e5 = realmodels.e5_small()
    train, held = split("fr")
    tr = write_lines("init-fr-train.txt", train)
    he = write_lines("init-fr-held.txt", held[:1000])
    t0 = time.perf_counter()
    tok = realmodels.train_unigram_tokenizer(train, WORK / "init-tok")
    train_s = time.perf_counter() - t0
    # the documented recipe: the corpus' most frequent words, embedded by the model itself
    words, distinct = api.frequent_words(train, 50000)
    wl = write_lines("init-words.txt", words)
    _, embed_wall, embed_rss = embtool("embed", e5, "-i", wl, "-o", WORK / "init-words.vec", "--force", "--quiet", "--threads", THREADS)
    rows = []
    settings = [("random", ["--method", "random"]), ("fvt", ["--method", "fvt"]),
                ("ofa", ["--word-vectors", WORK / "init-words.vec"]),
                ("ofa --no-center (plain cosine, as in the paper)", ["--word-vectors", WORK / "init-words.vec", "--no-center"]),
                ("ofa --rank 100", ["--word-vectors", WORK / "init-words.vec", "--rank", "100"]),
                ("ofa --rank 100 --rank-basis source (OFA's coordinates)", ["--word-vectors", WORK / "init-words.vec", "--rank", "100",
                                                                             "--rank-basis", "source"]),
                ("fvt --rank 100", ["--method", "fvt", "--rank", "100"])]
    for name, args in settings:
        out = WORK / ("init-" + name.split(" (")[0].replace(" ", "").replace("--", "-"))
        s, wall, rss = embtool("init-subwords", e5, "--tokenizer", WORK / "init-tok", *args, "-o", out, "--force", "--json",
                               "--quiet", "--threads", THREADS)
        fid = _fidelity(e5, out, he, "query: ")
        rows.append({"setting": name, "rows": s["rows"], "overlap": s["overlap"], "wall_s": wall, "rss_mb": rss,
                     "params_before": s["embedding_parameters_before"], "params_after": s["embedding_parameters_after"],
                     "bytes_before": s["bytes_before"], "bytes_after": s["bytes_after"], "vocab_after": s["vocab_after"],
                     "word_vectors": s.get("word_vectors"), **fid})
        log(f"init {name}: cos {fid['cosine_mean']:.4f} r@10 {fid['recall@10']:.3f} ({wall:.1f} s)")
    s, auto_wall, auto_rss = embtool("init-subwords", e5, "--tokenizer", WORK / "init-tok", "--word-vectors", "auto", "-c", tr,
                                     "-o", WORK / "init-ofa-auto", "--force", "--json", "--quiet", "--threads", THREADS)
    RESULTS["init"] = {"rows": rows, "train_s": train_s, "vocab": tok.get_vocab_size(), "words": len(words),
                       "distinct_words": distinct, "embed_words_s": embed_wall, "embed_words_rss_mb": embed_rss,
                       "auto_wall_s": auto_wall, "auto_rss_mb": auto_rss, "auto_rows": s["rows"]}


def _ray_peak_rss(stop, peaks: dict) -> None:
    """Poll /proc for Ray's embedding actors (`ray::_EmbedActor...`) and keep each one's peak RSS (VmHWM, MB)."""
    while not stop.is_set():
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes()
                if not cmd.startswith(b"ray::_EmbedActor"):
                    continue
                hwm = [ln for ln in (d / "status").read_text().splitlines() if ln.startswith("VmHWM:")]
            except OSError:
                continue
            if hwm:
                peaks[d.name] = max(peaks.get(d.name, 0.0), int(hwm[0].split()[1]) / 1024)
        stop.wait(0.2)


def bench_ray() -> None:
    """embed --ray with 1 and 2 workers vs one embtool process, same texts, alternating; per-worker peak RSS."""
    import threading

    minilm = realmodels.minilm()
    train, _ = split("en")
    texts = write_lines("ray-en-2000.txt", train[:2000])
    peaks: dict[str, list[float]] = {"ray1": [], "ray2": []}

    def ray_run(workers: int):
        seen: dict = {}
        stop = threading.Event()
        t = threading.Thread(target=_ray_peak_rss, args=(stop, seen), daemon=True)
        t.start()
        try:
            r = timed([PY, "-m", "embtool", "embed", minilm, "-i", texts, "--ray", "--workers", workers, "--threads",
                       str(int(THREADS) // workers), "-o", WORK / f"ray-{workers}", "--force", "--json", "--quiet"])
        finally:
            stop.set()
            t.join()
        peaks[f"ray{workers}"].append(sorted(seen.values()))
        return r

    runs = alternate(
        single=lambda: timed([PY, "-m", "embtool", "embed", minilm, "-i", texts, "--threads", THREADS,
                              "-o", WORK / "ray-single.npy", "--force", "--json", "--quiet"]),
        ray1=lambda: ray_run(1), ray2=lambda: ray_run(2))
    rows = []
    for k, label in (("single", "one process (`embtool embed`)"), ("ray1", "`embed --ray --workers 1`"),
                     ("ray2", "`embed --ray --workers 2`")):
        m = median_of(runs[k])
        workers = [max(w) for w in zip(*peaks[k])] if peaks.get(k) and all(peaks[k]) else []
        rows.append({"setting": label, "wall_s": m["wall_s"], "texts_per_s": 2000 / m["wall_s"], "driver_rss_mb": m["rss_mb"],
                     "worker_rss_mb": [float(np.median([run[i] for run in peaks[k] if len(run) > i])) for i in range(len(workers))]
                     if workers else []})
        log(f"ray {label}: {rows[-1]['texts_per_s']:.1f} texts/s (whole process), workers {rows[-1]['worker_rss_mb']}")
    RESULTS["ray"] = {"rows": rows, "texts": 2000, "runs": RUNS}


def bench_mpnet() -> None:
    """all-mpnet-base-v2 beside all-MiniLM: trim for English, 4-bit, mixed, and onnxruntime's 4-bit in the same run."""
    mpnet = realmodels.mpnet()
    train, held = split("en")
    tr = write_lines("mpnet-en-train.txt", train)
    he = write_lines("mpnet-held.txt", held[:500])
    calib = write_lines("q-calib.txt", train[:256])
    fp32 = _size(mpnet)
    s, wall, rss = embtool("trim-vocab", mpnet, "-c", tr, "-o", WORK / "mpnet-en", "--force", "--json", "--quiet")
    ev, _, _ = embtool("trim-vocab", mpnet, "-c", tr, "-o", WORK / "mpnet-en", "--force", "--json", "--quiet", "--eval", he,
                       "--eval-limit", "300")
    trim = {"vocab_before": s["vocab_before"], "vocab_after": s["vocab_after"], "bytes_before": s["bytes_before"],
            "bytes_after": s["bytes_after"], "wall_s": wall, "rss_mb": rss, "eval": ev["eval"]}
    log(f"mpnet trim: {s['vocab_before']} -> {s['vocab_after']} tokens, cos {ev['eval']['cosine_mean']:.5f}")
    rows = []
    portable = WORK / "all-mpnet-base-v2-portable-onnx"
    if not portable.exists():
        embtool("export-onnx", mpnet, "--portable", "-o", portable, "--quiet")
    import shutil

    out = WORK / "mpnet-ort-nbits32"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(portable, out, ignore=lambda d, names: [n for n in names if n.startswith("model.onnx")])
    r, wall, rss = peer("ort-nbits", portable / "model.onnx", out / "model.onnx", "32")
    rows.append({"method": "onnxruntime MatMulNBits 4-bit block 32 (+Gather)", "bytes": _size(out), "share": _size(out) / fp32,
                 **_fidelity(mpnet, out, he), "seconds": r["seconds"]})
    ort4 = rows[0]["bytes"]
    for label, args in (("embtool 4-bit g32 (default: GPTQ, built-in sample)", ["--bits", "4"]),
                        ("embtool 4-bit g32 RTN (no data)", ["--bits", "4", "--method", "rtn"]),
                        # the quick planner (Hessian estimates, round-to-nearest): the measured one runs GPTQ per width,
                        # about 20 minutes on MPNet
                        ("embtool mixed {2,4,8}, quick planner, onnxruntime 4-bit size",
                         ["--bits", "2,4,8", "--max-size", str(ort4), "--calib", calib, "--method", "rtn", "--sensitivity", "hessian",
                          "--probes", "1"])):
        out = WORK / ("mpnet-q-" + "".join(c for c in label if c.isalnum()))
        s, wall, rss = embtool("quantize", mpnet, *args, "-o", out, "--force", "--json", "--quiet")
        rows.append({"method": label, "bytes": _size(out), "share": _size(out) / fp32, **_fidelity(mpnet, out, he),
                     "seconds": wall, "rss_mb": rss})
        log(f"mpnet quantize {label}: {rows[-1]['share']:.3f} cos {rows[-1]['cosine_mean']:.4f}")
    RESULTS["mpnet"] = {"fp32_bytes": fp32, "trim": trim, "rows": rows}


def bench_shrink() -> None:
    """`embtool shrink` to a size budget, each model for one language: its own held-out lines (every 10th line of the
    training split it is given) and the corpus's held-out split (300 paragraphs it never saw)."""
    rows = []
    for name, folder, lang, budget, prefix, quick in (
            ("multilingual-e5-small", realmodels.e5_small(), "fr", 16_000_000, "passage: ", False),
            ("all-MiniLM-L6-v2", realmodels.minilm(), "en", 15_000_000, "", False),
            ("all-mpnet-base-v2", realmodels.mpnet(), "en", 60_000_000, "", False)):
        train, held = split(lang)
        tr = write_lines(f"shrink-{lang}-train.txt", train)
        he = write_lines(f"shrink-{lang}-held.txt", held[:300])
        out = WORK / f"shrink-{name}"
        s, wall, rss = embtool("shrink", folder, "-c", tr, "--max-size", str(budget), *(["--quick"] if quick else []),
                               "-o", out, "--force", "--json", "--quiet", "--threads", THREADS)
        f = _fidelity(folder, out, he, prefix)
        rows.append({"model": name, "lang": lang, "budget": budget, "quick": quick, "bytes_before": s["bytes_before"],
                     "bytes_after": s["bytes_after"], "steps": s["steps"], "eval": s["eval"], "heldout": f, "wall_s": wall,
                     "rss_mb": rss})
        log(f"shrink {name} -> {budget / 1e6:.0f} MB: {s['bytes_after'] / 1e6:.1f} MB, own held-out cos {s['eval']['cosine_mean']:.4f} "
            f"r@10 {s['eval']['recall_at_10']:.3f}; held-out split cos {f['cosine_mean']:.4f} r@10 {f['recall_at_10']:.3f} ({wall:.0f} s)")
    RESULTS["shrink"] = rows


def bench_fused() -> None:
    """onnxruntime's fused CPU operators vs the standard-op subgraphs of the rotary builder (tools/fused_ops.py)."""
    out, _, _ = timed([PY, ROOT / "tools" / "fused_ops.py", "--json"])
    import onnxruntime

    RESULTS["fused"] = {"rows": json.loads(out.strip().splitlines()[-1]), "onnxruntime": onnxruntime.__version__}
    log("fused ops: " + ", ".join(f"{r['op']} {r['speedup']:.2f}x" for r in RESULTS["fused"]["rows"]))


# ---------------------------------------------------------------------------------------------
def plots() -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "quantize" in RESULTS or "factorize" in RESULTS or "trim" in RESULTS:
        fig, ax = plt.subplots(figsize=(8, 5))
        if "quantize" in RESULTS:
            for r in RESULTS["quantize"]["rows"]:
                is_e = r["method"].startswith("embtool")
                ax.scatter(100 * r["share"], r["cosine_mean"], marker="o" if is_e else "x", color="C0" if is_e else "C3")
                ax.annotate(r["method"].replace("embtool ", "").replace("onnxruntime ", "ORT ")[:28], (100 * r["share"], r["cosine_mean"]),
                            fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel("model bytes, % of fp32 (all-MiniLM-L6-v2)")
        ax.set_ylabel("mean cosine to fp32 (1,000 held-out sentences)")
        ax.set_title("Quantization: size vs fidelity (o embtool, x onnxruntime)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(ROOT / "docs" / "quantize-size-vs-cosine.png", dpi=120)
        made.append("quantize-size-vs-cosine.png")
        plt.close(fig)
    if "factorize" in RESULTS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, w in sorted({(r["model"], r.get("weighting", "plain")) for r in RESULTS["factorize"]}):
            rs = [r for r in RESULTS["factorize"] if r["model"] == name and r.get("weighting", "plain") == w]
            ax.plot([r["params_share"] * 100 for r in rs], [r["cosine"] for r in rs], "o-" if w == "plain" else "s--",
                    label=name + (" (--corpus)" if w == "corpus" else ""))
            for r in rs:
                ax.annotate(f"k={r['rank']}", (r["params_share"] * 100, r["cosine"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel("embedding parameters, % of the original")
        ax.set_ylabel("mean cosine to the original (300 held-out texts)")
        ax.set_title("OFA factorization without continued pretraining")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(ROOT / "docs" / "factorize-rank-vs-cosine.png", dpi=120)
        made.append("factorize-rank-vs-cosine.png")
        plt.close(fig)
    if "embed" in RESULTS:
        fig, ax = plt.subplots(figsize=(7, 4))
        rs = RESULTS["embed"]
        x = np.arange(len(rs))
        for i, (key, label) in enumerate((("embtool_tps", "embtool"), ("naive_tps", "onnxruntime loop, unsorted"),
                                          ("st_tps", "sentence-transformers (torch)"))):
            ax.bar(x + (i - 1) * 0.27, [r[key] for r in rs], 0.27, label=label)
        ax.set_xticks(x, [r["model"] for r in rs])
        ax.set_ylabel("sentences / s (2,000 English, default batching, 2 threads)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(ROOT / "docs" / "embed-throughput.png", dpi=120)
        made.append("embed-throughput.png")
        plt.close(fig)
    return made


def _runs_text() -> str:
    runs = {**_old_runs(), **RESULTS.get("_runs", {})}  # sections kept from the existing report keep their dates
    names = [n for n in SECTIONS if n in RESULTS or n in runs]
    return "measured: " + ", ".join(f"{n} {runs[n]['date']} by `{runs[n]['command']}`" if n in runs else f"{n} by `make bench`"
                                    for n in names)


QUANT_HEADER = ["| method | bytes | % of fp32 | mean cosine | min cosine | recall@10 | time (s) |", "|---|---|---|---|---|---|---|"]


def _quant_row(r: dict) -> str:
    """A row of the quantization tables (all-MiniLM and MPNet)."""
    return (f"| {r['method']} | {r['bytes'] / 1e6:.1f} MB | {100 * r['share']:.1f}% | {r['cosine_mean']:.4f} | "
            f"{r['cosine_min']:.4f} | {r['recall@10']:.3f} | {r['seconds']:.1f} |")


def report(cmd: str) -> None:
    import onnxruntime
    import tokenizers

    R = RESULTS
    L = ["# Benchmarks", "",
         f"Generated by `{cmd}` (a section re-measured alone: `python tools/bench.py --only SECTION`; "
         f"{_runs_text()}); machine: {platform.machine()}, {os.cpu_count()} cores, "
         f"Python {platform.python_version()}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, tokenizers {tokenizers.__version__}. "
         "Every embtool number and the peer it is compared with are measured in the same run; wall times include process start and "
         "model loading unless a column says otherwise; RSS is the process's peak resident set (`/usr/bin/time`). Corpora: "
         "`embtool/data/corpora` (shipped in the repo; training split = first 80% of lines, held-out = the rest).", ""]
    if "embed" in R:
        v = R["embed"][0]["versions"]
        L += ["## embed throughput", "",
              f"English paragraphs (the first lines of the training split: 2,000, or 500 for MPNet), 2 threads, encode time after loading; each tool at its "
              "default batching: embtool about 1,024 padded tokens per onnxruntime call (length-sorted), sentence-transformers 32 "
              "texts per batch (length-sorted). "
              f"Peers: sentence-transformers {v['sentence_transformers']} on torch {v['torch']} (same model, same machine, same run), and an "
              f"independent onnxruntime {R['embed'][0].get('ort_version', '')} loop (tools/bench_peers.py `ort-loop`: its own session, "
              "`tokenizers` and numpy mean pooling, no embtool code) over embtool's standard-ops export of the same model, 32 texts per "
              "batch in input order (no length sorting). "
              f"The three alternate, {R['embed'][0].get('runs', 1)} runs each; every figure is the median.", "",
              "| model | texts | embtool (texts/s) | sentence-transformers | ratio | ratio per run | ORT loop unsorted | embtool peak RSS | ST peak RSS |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in R["embed"]:
            per_run = ", ".join(f"{x:.2f}" for x in r.get("ratio_runs", []))
            L.append(f"| {r['model']} | {r.get('texts', 2000):,} | {r['embtool_tps']:.1f} | {r['st_tps']:.1f} | {r['embtool_tps'] / r['st_tps']:.2f}× | {per_run} | "
                     f"{r['naive_tps']:.1f} | {r['embtool_rss']:.0f} MB | {r['st_rss']:.0f} MB |")
        L += ["", "![throughput](embed-throughput.png)", ""]
    if "search" in R and "recall" in R["search"]:
        s = R["search"]

        def row(label, r):
            p50 = f"{1000 * r['single_p50_s']:.0f} ms" if r.get("single_p50_s") is not None else "-"
            return f"| {label} | {r['search_s']:.2f} | {p50} | {r['recall@10']:.3f} | {r['rss_mb']:.0f} MB |"

        fv = s["faiss_default"]["version"]
        L += ["## search", "",
              f"{s['n']:,} × {s['d']} random unit vectors, {s['queries']} queries, k = 10, 2 threads; search time only (index "
              f"opened or loaded before timing), medians of {s['runs']} runs, embtool and faiss alternating in the same run. "
              "embtool searches the memory-mapped index file block by block (RSS bounded by a block), faiss holds the index in RAM. "
              f"Single query: median latency of {SEARCH_SINGLE} queries sent one at a time. Recall@10 against embtool's float search "
              "(random vectors: binary recall says nothing about real text; see the table below).", "",
              "| method | 100 queries (s) | one query (p50) | recall@10 | peak RSS |", "|---|---|---|---|---|",
              row(f"embtool float32 ({s['float']['index_gb']:.2f} GB file)", s["float"]),
              row(f"faiss {fv} IndexFlatIP, default", s["faiss_default"]),
              row("faiss IndexFlatIP, distance_compute_blas_threshold = 20", s["faiss_tuned"]),
              row(f"embtool int8 ({s['int8']['index_gb']:.2f} GB file)", s["int8"]),
              row(f"embtool binary, Hamming ({s['binary']['scan_gb']:.3f} GB of bits scanned)", s["binary"]),
              row("faiss IndexBinaryFlat (same bits)", s["faiss_binary"]),
              row("embtool binary + default rescoring (int8 codes)", s["binary_rescore"]), "",
              f"float vs tuned faiss: {s['float']['search_s'] / s['faiss_tuned']['search_s']:.2f}× the time; binary vs "
              f"IndexBinaryFlat: {s['binary']['search_s'] / s['faiss_binary']['search_s']:.2f}×; binary vs embtool float: "
              f"{s['float']['search_s'] / s['binary']['search_s']:.1f}× faster. Binary top-10 agreement with IndexBinaryFlat: "
              f"{s['binary']['agreement_with_faiss_binary']:.3f} (ties at equal Hamming distance may differ).", ""]
        if "whole_float" in s:
            w = lambda n: s[n]["wall_s"]  # noqa: E731
            L += ["Whole processes (the issue's protocol: start, open or load the index, search the 100 queries, write the "
                  "results; `embtool search --query-embeddings q.npy -k 10 --rescore 0 --json` against the peer script "
                  f"that loads the .npy into faiss), medians of {s['runs']} alternating runs. The faiss float process is "
                  "mostly loading: reading the 1.5 GB .npy and adding it to the index allocate 3 GB, and on this virtual "
                  "machine fresh memory is slow to fault in (by hand: `np.load` 1.9 s, `IndexFlatIP.add` 6.0 s, search "
                  "0.81 s); on a machine where allocation is cheap the float ratio would be far closer to the search-only "
                  "ratio above:", "",
                  "| | embtool | faiss | embtool / faiss |", "|---|---|---|---|",
                  f"| float32 (faiss IndexFlatIP tuned) | {w('whole_float'):.2f} s | {w('whole_faiss_tuned'):.2f} s | "
                  f"{w('whole_float') / w('whole_faiss_tuned'):.2f}× |",
                  f"| binary (faiss IndexBinaryFlat) | {w('whole_binary'):.2f} s | {w('whole_faiss_binary'):.2f} s | "
                  f"{w('whole_binary') / w('whole_faiss_binary'):.2f}× |",
                  f"| int8 (against faiss float32 tuned) | {w('whole_int8'):.2f} s | {w('whole_faiss_tuned'):.2f} s | "
                  f"{w('whole_int8') / w('whole_faiss_tuned'):.2f}× |", ""]
        L += [
              "Recall@10 on real embeddings, through `embtool search`, against the float index: 6,000 paragraphs of the shipped "
              "corpus (e5: French with `passage: `; MiniLM: English), 300 queries = the first half of the words of every 20th "
              "paragraph (e5: `query: `). Binary codes: centred by the corpus mean and ITQ-rotated (stored in the index). "
              "Rescoring: with the stored float16 vectors (`--keep-float`) or int8 codes (`--keep-int8`).", "",
              "| model | mean pairwise cosine | int8 | int8 + rescoring | binary | binary + `--rescore 100` | "
              "binary + default rescoring (depth) | binary + default rescoring with int8 codes |", "|---|---|---|---|---|---|---|---|"]
        for r in s["recall"]:
            L.append(f"| {r['model']} | {r['mean_pairwise_cosine']:.2f} | {r['int8']:.3f} | {r['int8_rescore']:.3f} | {r['binary']:.3f} | "
                     f"{r['binary_rescore100']:.3f} | {r['binary_rescore']:.3f} ({r['default_depth']}) | {r['binary_int8_rescore']:.3f} |")
        L.append("")
    if "trim" in R:
        L += ["## trim-vocab (multilingual-e5-small)", "",
              "Trimmed to each corpus's training split (every token seen is kept); held-out: 300 texts of the same language "
              "(for `--script Latin`: French). Time and RSS of the trim alone (without --eval).", "",
              "| setting | vocabulary | bytes | held-out identical tokenization | mean cosine | min cosine | wall | counting | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in R["trim"]:
            e = r["eval"]
            cnt = f"{r['count_mb_s']:.1f} MB/s" if "count_mb_s" in r else "-"
            L.append(f"| {r['setting']} | 250,002 → {r['vocab_after']:,} | {r['bytes_before'] / 1e6:.0f} → {r['bytes_after'] / 1e6:.1f} MB "
                     f"({100 * r['bytes_after'] / r['bytes_before']:.1f}%) | {100 * e['identical_tokenization']:.1f}% | {e['cosine_mean']:.5f} | "
                     f"{e['cosine_min']:.5f} | {r['wall_s']:.1f} s | {cnt} | {r['rss_mb']:.0f} MB |")
        L += ["", "The reference trimmer (vocabtrimmer) needs the Hugging Face hub and torch; it was not run here, so no ratio is given.", ""]
    if "quantize" in R:
        q = R["quantize"]
        L += ["## quantize (all-MiniLM-L6-v2)", "",
              f"1,000 held-out English sentences (not the calibration texts; GPTQ and mixed precision calibrate on 256 training-split "
              f"paragraphs). Cosine and recall@10 agreement are against the fp32 model (fp32 = {q['fp32_bytes'] / 1e6:.1f} MB). "
              "The onnxruntime rows quantize embtool's standard-ops fp32 export with onnxruntime's own tools, in the same run.", "",
              *QUANT_HEADER]
        L += [_quant_row(r) for r in q["rows"]]
        L += ["", "![size vs cosine](quantize-size-vs-cosine.png)", ""]
    if "quantize_speed" in R:
        L += ["Quantize time and embed throughput of the 4-bit (RTN, group 32) model vs float (2,000 English paragraphs, batch 32, 2 threads):", "",
              "| model | quantize wall | quantize peak RSS | bytes | float texts/s | 4-bit texts/s |", "|---|---|---|---|---|---|"]
        for r in R["quantize_speed"]:
            L.append(f"| {r['model']} | {r['quantize_s']:.1f} s | {r['quantize_rss_mb']:.0f} MB | {r['bytes_before'] / 1e6:.0f} → "
                     f"{r['bytes_after'] / 1e6:.1f} MB | {r['float_tps']:.1f} | {r['q4_tps']:.1f} |")
        L.append("")
    if "mixed" in R:
        L += ["## mixed precision vs simpler bit assignments (all-MiniLM-L6-v2, RTN, group 32)", "",
              "Bits from {2, 4, 8} at an average of 3 bits per weight, all three at the same budget; 1,000 held-out sentences.", "",
              "| assignment | bytes | mean cosine | recall@10 |", "|---|---|---|---|"]
        for r in R["mixed"]["rows"]:
            L.append(f"| {r['method']} | {r['bytes'] / 1e6:.2f} MB | {r['cosine_mean']:.4f} | {r['recall@10']:.3f} |")
        L.append("")
    if "factorize" in R:
        L += ["## factorize", "",
              "Rank-k factorization of the embedding table, no continued pretraining (OFA continues pretraining after it; without that, "
              "low ranks cost fidelity). Held-out: 300 texts (e5: French with `passage: `; MiniLM: English). `--corpus`: the basis "
              "weights each row by its token's count in the training split (+1); energy and error are of the whole, unweighted table.", "",
              "| model | rank | basis | embedding params | rel. Frobenius error | energy kept | mean cosine | recall@10 | factorize time | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(R["factorize"], key=lambda r: (r["model"], r["rank"], r.get("weighting", "plain"))):
            basis = "`--corpus` (training split)" if r.get("weighting") == "corpus" else "plain"
            L.append(f"| {r['model']} | {r['rank']} | {basis} | {100 * r['params_share']:.1f}% | {r['rel_error']:.3f} | {100 * r['energy']:.1f}% | "
                     f"{r['cosine']:.4f} | {r['recall@10']:.3f} | {r['factorize_s']:.2f} s | "
                     f"{'-' if r['rss_mb'] is None else format(r['rss_mb'], '.0f') + ' MB'} |")
        L += ["", "![rank vs cosine](factorize-rank-vs-cosine.png)", ""]
    if "init" in R:
        i = R["init"]
        L += ["## init-subwords (multilingual-e5-small, new French tokenizer)", "",
              f"A Unigram tokenizer trained with `tokenizers` on the French training split (asked for 32,000 pieces; the trainer "
              f"stops at {i['vocab']:,} on this 3.2 MB corpus; {i['train_s']:.1f} s). The model is given it with each method, "
              "no continued pretraining (zero-shot), and compared with the original model (its own tokenizer) on 1,000 held-out "
              "French paragraphs with the `query: ` prefix: mean cosine between the two models' embeddings of the same text, and "
              "recall@10 agreement of the neighbour lists among those texts. OFA's word vectors are the model's own embeddings "
              + (f"of all {i['words']:,} distinct training-split words (the `--max-words` cap is 50,000): " if i["words"] == i["distinct_words"]
                 else f"of the {i['words']:,} most frequent training-split words (of {i['distinct_words']:,}): ")
              +
              f"`embtool embed` took {i['embed_words_s']:.0f} s (peak RSS {i['embed_words_rss_mb']:.0f} MB). "
              f"Wall time and RSS are the init-subwords run alone (no --eval).", "",
              "| method | rows copied / neighbours / FVT / random | embedding params | bytes | mean cosine | min cosine | recall@10 | wall | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in i["rows"]:
            w = r["rows"]
            L.append(f"| {r['setting']} | {w['copied']:,} / {w['neighbours']:,} / {w['fvt']:,} / {w['random']:,} | "
                     f"{r['params_before'] / 1e6:.1f}M → {r['params_after'] / 1e6:.2f}M | {r['bytes_before'] / 1e6:.0f} → {r['bytes_after'] / 1e6:.1f} MB | "
                     f"{r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['recall@10']:.3f} | {r['wall_s']:.1f} s | {r['rss_mb']:.0f} MB |")
        o = i["rows"][0]["overlap"]
        L += ["", f"Copied rows: {o['exact']:,} exact, {o['case']:,} by case, {o['special']} special tokens by role. "
              f"`--word-vectors auto -c train.txt` (the words embedded inside the same command): {i['auto_wall_s']:.0f} s, "
              f"peak RSS {i['auto_rss_mb']:.0f} MB. No peer ran: FOCUS and WECHSEL need torch, the Hugging Face hub and "
              "external fastText vectors; FVT, their data-free baseline, is the `fvt` row.", ""]
    if "mpnet" in R:
        m = R["mpnet"]
        t = m["trim"]
        e = t["eval"]
        L += ["## all-mpnet-base-v2 (MPNet): trim for English, 4-bit, mixed", "",
              f"The same protocol as all-MiniLM above (fp32 = {m['fp32_bytes'] / 1e6:.0f} MB): trim to the English training split, "
              "held-out 300 English paragraphs for the trim, 500 for quantization; cosine and recall@10 against the fp32 model. "
              "onnxruntime's MatMulNBits quantizer runs on embtool's standard-ops export in the same run.", "",
              f"trim-vocab: {t['vocab_before']:,} → {t['vocab_after']:,} tokens, {t['bytes_before'] / 1e6:.0f} → {t['bytes_after'] / 1e6:.0f} MB "
              f"({100 * t['bytes_after'] / t['bytes_before']:.1f}%), held-out identical tokenization {100 * e['identical_tokenization']:.1f}%, "
              f"mean cosine {e['cosine_mean']:.5f}, min {e['cosine_min']:.5f}; {t['wall_s']:.1f} s, peak RSS {t['rss_mb']:.0f} MB.", "",
              *QUANT_HEADER]
        L += [_quant_row(r) for r in m["rows"]]
        L.append("")
    if "shrink" in R:
        L += ["## shrink: one command to a size budget", "",
              "`embtool shrink MODEL -c TRAIN --max-size N`: trim to the language of the training split, then mixed 2/4/8-bit "
              "quantization to the budget (the measured planner with GPTQ, the default, for every model). Fidelity against the original model: on the lines shrink kept aside "
              "(every 10th line of what it was given, 300), and on 300 paragraphs of the held-out split it never saw "
              "(e5 with `passage: `). Wall time and peak RSS of the whole command.", "",
              "| model | language | budget | bytes | % of original | trim | quantize | kept-aside cosine / recall@10 | "
              "held-out split cosine (min) / recall@10 | wall | peak RSS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in R["shrink"]:
            trim = next((st for st in r["steps"] if st["step"] == "trim-vocab"), None)
            q = next((st for st in r["steps"] if st["step"] == "quantize"), None)
            e, f = r["eval"], r["heldout"]
            L.append(f"| {r['model']} | {r['lang']} | {r['budget'] / 1e6:.0f} MB | {r['bytes_after'] / 1e6:.1f} MB | "
                     f"{100 * r['bytes_after'] / r['bytes_before']:.1f}% | "
                     f"{trim['vocab_before']:,} → {trim['vocab_after']:,} tokens | "
                     + (f"{q['bits_per_weight']:.2f} bits/weight, {q['method']}{' (--quick)' if r['quick'] else ''}" if q else "-")
                     + f" | {e['cosine_mean']:.4f} / {e['recall_at_10']:.3f} | {f['cosine_mean']:.4f} ({f['cosine_min']:.3f}) / "
                     f"{f['recall_at_10']:.3f} | {r['wall_s']:.0f} s | {r['rss_mb']:.0f} MB |")
        L.append("")
    if "fused" in R:
        sys.path.insert(0, str(ROOT / "tools"))
        import fused_ops

        L += ["## onnxruntime's fused operators in the rotary builder", "",
              f"Each fused CPU operator of onnxruntime {R['fused']['onnxruntime']} against the standard-op subgraph "
              "runtime/rotary_graph.py emits for it, same inputs (hidden states [8, 256, 1024], heads [8, 16, 256, 64], "
              f"2 threads, ORT_ENABLE_ALL); the two alternate, {fused_ops.RUNS} rounds of {fused_ops.CALLS} calls, median "
              "per call (`python tools/fused_ops.py`).", "", *fused_ops.table(R["fused"]["rows"]), "",
              "Adopted: SimplifiedLayerNormalization for every RMSNorm (Qwen3, EmbeddingGemma) and RotaryEmbedding for "
              "the rotation of q and k in every rotary family (int64 positions, a cos/sin cache per theta computed for "
              "the batch's length); `--portable` keeps the standard ops. Not adopted: SkipSimplifiedLayerNormalization, no faster "
              "than the Add + SimplifiedLayerNormalization the graph already has (the last row; 0.85x, 0.95x and 1.04x in three "
              "runs on 2026-11-30; built behind rotary_graph.FUSE_SKIP_RMSNORM and tested), and GroupQueryAttention, whose CPU kernel "
              "attends causally to keys given by per-row lengths, which cannot express the bidirectional encoders nor "
              "a left-padded batch.", ""]
    if "ray" in R:
        r = R["ray"]
        L += ["## embed on Ray (this 2-core machine)", "",
              f"{r['texts']:,} English paragraphs with all-MiniLM-L6-v2, whole processes (Ray start-up included), {r['runs']} runs each "
              "alternating, medians. `--ray` starts a local Ray; each worker is one actor holding one model with 2/workers "
              "onnxruntime threads. On two cores Ray cannot be faster than one process: the point is the recipe and that the "
              "output is the same (tests/test_ray.py); the figures say what Ray costs.", "",
              "| setting | wall | texts/s | driver peak RSS | peak RSS per worker |", "|---|---|---|---|---|"]
        for x in r["rows"]:
            w = ", ".join(f"{v:.0f} MB" for v in x["worker_rss_mb"]) or "-"
            L.append(f"| {x['setting']} | {x['wall_s']:.1f} s | {x['texts_per_s']:.1f} | {x['driver_rss_mb']:.0f} MB | {w} |")
        L.append("")
    text = "\n".join(L) + "\n"
    by_hand = ROOT / "docs" / "benchmarks-by-hand.md"  # single runs measured by hand, each with its command: kept verbatim
    text = _keep_unmeasured(text) + ("\n" + by_hand.read_text(encoding="utf-8") if by_hand.exists() else "")
    (ROOT / "docs" / "benchmarks.md").write_text(text, encoding="utf-8")


# the heading each section writes, in report order: a section whose results are not in .bench/results.json (a fresh
# clone that re-measured only some sections) keeps its text from the existing docs/benchmarks.md, unchanged
HEADINGS = [("embed", "## embed throughput"), ("search", "## search"), ("trim", "## trim-vocab"), ("quantize", "## quantize"),
            ("mixed", "## mixed precision"), ("factorize", "## factorize"), ("init", "## init-subwords"),
            ("mpnet", "## all-mpnet-base-v2"), ("shrink", "## shrink"), ("fused", "## onnxruntime's fused"),
            ("ray", "## embed on Ray")]


def _blocks(text: str) -> tuple[str, dict[str, str]]:
    """(the text before the first section, {section: its block}) of a benchmarks.md."""
    parts = text.split("\n## ")
    head, blocks = parts[0], {}
    for part in parts[1:]:
        part = "## " + part
        key = next((k for k, h in HEADINGS if part.startswith(h)), None)
        if key is not None:
            blocks[key] = part.rstrip("\n") + "\n"
    return head, blocks


def _keep_unmeasured(new: str) -> str:
    old_path = ROOT / "docs" / "benchmarks.md"
    if not old_path.exists():
        return new
    head, fresh = _blocks(new)
    _, old = _blocks(old_path.read_text(encoding="utf-8"))
    kept = [k for k, _ in HEADINGS if k not in fresh and k in old]
    if not kept:
        return new
    body = [fresh.get(k) or old.get(k) for k, _ in HEADINGS if k in fresh or k in old]
    return head.rstrip("\n") + "\n\n" + "\n".join(b for b in body if b)


def _old_runs() -> dict[str, dict[str, str]]:
    """{section: {date, command}} from the header of the existing docs/benchmarks.md ("name DATE by `cmd`")."""
    import re

    p = ROOT / "docs" / "benchmarks.md"
    if not p.exists():
        return {}
    first = p.read_text(encoding="utf-8").split("\n## ")[0]
    return {m.group(1): {"date": m.group(2), "command": m.group(3)}
            for m in re.finditer(r"(\w+) (\d{4}-\d\d-\d\d) by `([^`]+)`", first)}


SECTIONS = {"embed": bench_embed, "search": bench_search, "trim": bench_trim, "quantize": bench_quantize,
            "mixed": bench_mixed, "factorize": bench_factorize, "init": bench_init, "mpnet": bench_mpnet, "shrink": bench_shrink, "ray": bench_ray, "fused": bench_fused}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], *sys.argv[3:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append", choices=list(SECTIONS))
    ap.add_argument("--report-only", action="store_true", help="rewrite docs/ from .bench/results.json")
    a = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    (ROOT / "docs").mkdir(exist_ok=True)
    res_file = WORK / "results.json"
    if res_file.exists():
        RESULTS.update(json.loads(res_file.read_text()))
    for name in [] if a.report_only else (a.only or list(SECTIONS)):
        log(f"section {name}")
        SECTIONS[name]()
        RESULTS.setdefault("_runs", {})[name] = {"date": datetime.date.today().isoformat(),
                                                 "command": "make bench" if not a.only else f"python tools/bench.py --only {name}"}
        res_file.write_text(json.dumps(RESULTS, indent=1))
    plots()
    report("make bench")
    log("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
