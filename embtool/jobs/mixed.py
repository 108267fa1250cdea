"""Mixed precision judged on what users lose, with forward passes only.

Default (`sensitivity="measured"`): the damage of b bits for a tensor is the measured loss L of the pooled
embedding on calibration texts with that tensor alone quantized to b bits (one forward pass per tensor and
width; an 8-bit width scales the measured 4-bit loss instead, see `_scaled_options`), and the knapsack adds these
up. The Hessian-trace estimate below (`sensitivity="hessian"`) is kept
for comparison: on all-MiniLM and multilingual-e5-small it mis-ranked tensors (a mixed model came out worse
than the uniform one of the same size). Either way the chosen plan is checked against the uniform width that
fits the budget, both measured with every tensor replaced, and the better is kept (`_uniform_guard`).

Hessian-aware (Q-BERT / HAWQ-V2):

Distortion loss on calibration texts x: L(W) = mean_x ‖f(W; x) − f(W₀; x)‖², f the pooled, normalised
embedding. L(W₀) = 0 and ∇L(W₀) = 0, so by Taylor L(W₀ ± σz) = σ²/2 · zᵀHz ± O(σ³), hence for a
Rademacher probe z

    zᵀHz ≈ (L(W₀ + σz) + L(W₀ − σz)) / σ²,        E[zᵀHz] = tr(H)   (Hutchinson)

(the ± pair cancels the odd terms). Ω = tr(H)/n per tensor; the predicted loss of quantizing a tensor to
b bits is ½·Ω·‖Q_b(W) − W‖² (an isotropic second-order model), and bits are chosen per tensor by an exact
multiple-choice knapsack under the size budget.

The probed weights are graph inputs whose numpy buffers are wrapped by OrtValues without a copy, so the same
sessions serve every probe. A probe runs only the part of the model after the weight it changes, from the float
model's tensors cached at that point (runtime.staged.SuffixRunner). An ONNX input is probed in its own graph, its
MatMul weights and token table turned into such inputs (runtime.graphs.fed_encoder), so it gets the same plan as
the same model in safetensors. For the token-embedding table only the rows the calibration texts use carry
curvature: those rows are probed (and quantized: the other rows do not change the loss), and each row's predicted
damage is weighted by how often its token occurs (smoothed).

multilingual-e5-small's sensitivity (--bits 2,4,8, 2 threads) took 235-262 s and takes 44 s (51 s off the 4-bit grid)
(docs/benchmarks-by-hand.md): probes from their cut (about half the layers each), in batches of similar length on
one thread each; 8-bit losses scaled from the 4-bit ones, and no run for a width the weights already sit on; the
Linears that share an input quantized at every width by one GPTQ run; the token table's 250k rows quantized whole
once, at the chosen width.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from embtool.algorithms import knapsack
from embtool.algorithms import pooling as P
from embtool.algorithms import quantize as QA
from embtool.core.calibration import CALIB_SENTENCES, calibration_texts  # noqa: F401 (CALIB_SENTENCES re-exported)
from embtool.core.errors import InputError
from embtool.core.model import Model, weight_view
from embtool.core.threads import cpu_threads

EMB_COARSE_GROUPS = (128, 64, 32)  # the token table's alternative group size in mixed precision: the first that fits
SIGMA_REL = 0.05  # probe size relative to the tensor's RMS (the scale of 4-bit quantization noise)
PROBE_BATCH = 8  # calibration texts per onnxruntime run of a probe (sorted by length: little padding)


class SensitivityProbe:
    """The calibration texts run with some weights replaced, from the cut before the first of them only.

    The probed weights are graph inputs (`arrays`, writable numpy buffers: a caller may also change one in place
    and call `loss`). `runtime.staged.SuffixRunner` caches the float model's tensors at the cut before each group of
    Linears that read the same input (and before the token table's Gather), once; a probe of a weight runs the
    graph from its group's cut to the output, about half the model on average, and gets exactly what a whole
    forward pass gives (every node before the cut computes what the float model computes). The texts run in
    batches of similar length (little padding)."""

    def __init__(self, model: Model, names: list[str], emb: str | None, texts: list[str], threads: int = 0,
                 max_length: int = 64, batch_size: int = PROBE_BATCH):
        from embtool.runtime.encoder import EmbedSettings, Encoder, default_max_length, graph_session, require_finite
        from embtool.runtime.graphs import fed_encoder
        from embtool.runtime.staged import SuffixRunner

        self.model = model
        self.emb = emb
        built, self.fed = fed_encoder(model, names)
        # writable buffers. The token table's Gather reads only the rows of the calibration texts' tokens: the
        # probe's table holds those rows (filled below; the others are zero pages the system never materializes,
        # not a copy of 250k rows), and a probe of the table changes them in place (and restores them)
        table = self.fed.get(emb, "") if emb is not None else ""
        self.arrays: dict[str, np.ndarray] = {
            k: np.zeros(v.shape, v.dtype) if k == table else v if v.flags.writeable and v.flags.c_contiguous
            else np.array(v, copy=True) for k, v in built.feeds.items()}
        # the whole-graph session only gives the encoder its tokenization, inputs, output and pooling
        self.enc = Encoder(model, EmbedSettings(max_length=min(max_length, default_max_length(model)), normalize=True),
                           session=graph_session(built, threads, feeds=self.arrays))
        seqs = self.enc.tokenize(texts)
        ids, mask = self.enc.padded(seqs)
        self.token_counts = np.bincount(ids[mask > 0].ravel())
        if table in self.arrays:  # every id a batch holds, padding included
            rows = np.unique(np.append(ids.ravel(), self.enc.pad_id()))
            self.arrays[table][rows] = built.feeds[table][rows]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        self.batches = []
        for b0 in range(0, len(order), batch_size):
            self.batches.append(self.enc.batch_arrays(*self.enc.padded([seqs[i] for i in order[b0 : b0 + batch_size]])))
        # cuts: before the Linears that read one tensor (q/k/v, a fused qkv, gate and up), before the token table
        groups: dict[str, list[str]] = {}
        for w, f in self.fed.items():
            groups.setdefault(built.linear_inputs.get(w, f), []).append(f)
        group_of = {f: i for i, fs in enumerate(groups.values()) for f in fs}
        self.runner = SuffixRunner(built, self.arrays, self.batches, list(groups.values()), [self.enc.output_name], threads)
        built = None
        self.cut = {w: self.runner.cut_index(group_of[f]) for w, f in self.fed.items()}  # weight -> its cut number
        self.f0 = require_finite(self._embed(0, {}), model.root)  # NaN losses would choose the bits at random
        self.runs = 0

    def close(self) -> None:
        """Stop the runner's worker threads."""
        self.runner.close()

    def feed_name(self, weight: str) -> str:
        """The graph input that carries `weight` (a Linear's as its transpose); "" when the graph does not read it."""
        return self.fed.get(weight, "")

    def _embed(self, cut: int, replace: dict[str, np.ndarray]) -> np.ndarray:
        """The normalized pooled embeddings of the texts (in batch order) from cut number `cut`."""
        out = []
        for batch, (x,) in zip(self.batches, self.runner.run(cut, replace)):
            if self.enc.pooled_output:
                out.append(x.astype(np.float32, copy=False))
            else:  # as Encoder.run_batch pools and applies the sentence-transformers head
                out.append(self.enc._head(P.pool(x, batch["attention_mask"], self.enc.pooling, self.enc.prompt_length)))
        return P.normalize(np.concatenate(out))

    def loss(self, weight: str | None = None, replace: dict[str, np.ndarray] | None = None) -> float:
        """L with the weights now in `arrays` (and the feeds `replace` replaced), from the cut before `weight`
        (None: the whole graph)."""
        self.runs += 1
        cut = self.cut.get(weight, 0) if weight is not None else 0
        if replace:
            cut = min([cut] + [self.cut[w] for w, f in self.fed.items() if f in replace])
        d = self._embed(cut, replace or {}) - self.f0
        return float(np.mean(np.sum(d.astype(np.float64) ** 2, 1)))

    def used_rows(self) -> np.ndarray:
        return np.flatnonzero(self.token_counts)

    def hutchinson(self, weight: str, probes: int, rng: np.random.Generator, sigma_rel: float = SIGMA_REL) -> tuple[float, float, int]:
        """(Ω = tr(H)/n, its standard error, n) for one weight, by `probes` Rademacher probes.
        A weight the encoder graph does not use (e.g. a pooler) has Ω = 0 exactly."""
        if self.feed_name(weight) not in self.arrays:
            return 0.0, 0.0, 0
        feed = self.feed_name(weight)
        arr = self.arrays[feed]
        rows = self.used_rows() if weight == self.emb else None
        W0 = arr[rows].copy() if rows is not None else arr
        n = W0.size
        sigma = sigma_rel * float(np.sqrt(np.mean(W0.astype(np.float64) ** 2))) or 1e-3
        samples = []
        try:
            for _ in range(probes):
                z = rng.integers(0, 2, size=W0.shape).astype(np.float32) * 2 - 1
                vals = []
                for sign in (1.0, -1.0):
                    if rows is None:
                        vals.append(self.loss(weight, {feed: W0 + sign * sigma * z}))
                    else:
                        arr[rows] = W0 + sign * sigma * z
                        vals.append(self.loss(weight))
                samples.append((vals[0] + vals[1]) / sigma**2)
        finally:
            if rows is not None:
                arr[rows] = W0
        s = np.asarray(samples)
        se = float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("nan")
        return float(s.mean() / n), se / n, n

    def loss_with(self, values: dict[str, "np.ndarray | QA.QTensor"]) -> float:
        """L with several weights replaced at once (e.g. a whole quantization plan), each given as an array or as a
        QTensor (dequantized here, a Linear straight into the transposed layout it is fed in: a whole plan then
        exists once in float32, not also as the [out, in] arrays the session would copy). The token table's value
        may be given for the rows the texts use only (`used_rows`), or whole."""
        replace: dict[str, np.ndarray] = {}
        saved = None
        table = self.arrays.get(self.feed_name(self.emb)) if self.emb is not None else None
        try:
            for weight, v in values.items():
                if self.feed_name(weight) not in self.arrays:
                    continue
                if weight == self.emb:
                    v = v.dequantize() if isinstance(v, QA.QTensor) else v
                    rows = self.used_rows()
                    saved = table[rows].copy()
                    table[rows] = v if len(v) == len(rows) and len(v) != len(table) else v[rows]
                else:
                    replace[self.feed_name(weight)] = np.ascontiguousarray(
                        (v.dequantize() if isinstance(v, QA.QTensor) else v).T)
            if not replace and saved is None:
                return 0.0
            first = min(self.cut[w] for w in values if self.feed_name(w) in self.arrays)
            self.runs += 1
            d = self._embed(first, replace) - self.f0
            return float(np.mean(np.sum(d.astype(np.float64) ** 2, 1)))
        finally:
            if saved is not None:
                table[self.used_rows()] = saved

    def measured_damage(self, weight: str, new_value: "np.ndarray | QA.QTensor") -> float:
        """L with one weight replaced (e.g. by its quantized version, an array or a QTensor): the real damage. The
        token table's value may be given for the rows the texts use only (`used_rows`), or whole."""
        if self.feed_name(weight) not in self.arrays:
            return 0.0
        return self.loss_with({weight: new_value})


def option_bytes(m: Model, req, emb: str | None) -> Callable[[str, tuple[int, ...], int, int, bool], int]:
    """Bytes of a tensor (name, shape) at one option (bits, group size, symmetric): as embtool's packed format stores
    it (fp16 scales; what --target-bits and the reported bits per weight count), or for --max-size of an ONNX input
    or output (`--format onnx`) as the ONNX graph stores it (MatMulNBits keeps float32 scales; --portable codes under
    8 bits take 4)."""
    if onnx_output(m, req) and req.max_size is not None:
        return lambda k, shape, b, g, sym: QA.onnx_stored_bytes(*shape, b, g, sym, table=k == emb, portable=req.portable)
    return lambda k, shape, b, g, sym: QA.stored_bytes(*shape, b, g, sym)


def onnx_output(m: Model, req) -> bool:
    """The quantized model is written as an ONNX graph: an ONNX input, or `--format onnx`."""
    return m.format == "onnx" or getattr(req, "fmt", "safetensors") == "onnx"


def _sizes(ws, cost, names: list[str], bits, group_size: int, symmetric: bool) -> list[int]:
    """Bytes of all `names` at each width in `bits` (`cost`: option_bytes)."""
    return [sum(cost(k, ws.info(k).shape, b, group_size, symmetric) for k in names) for b in bits]


def header_bytes(tensors: list[str], quantized: list[str]) -> int:
    """An upper estimate of the safetensors header of a quantized model (8-byte length, the JSON index of
    every tensor, the quantization record and embtool's provenance), so that --max-size holds for the file:
    per entry its name and about 80 bytes of dtype/shape/offsets; a quantized tensor has three entries
    (qweight, scales, qzeros) and a record entry (escaped inside the metadata string). For an ONNX input the
    graph's own bytes (OnnxWeights.overhead) are added; its new initializers' and nodes' names fit these estimates."""
    q = set(quantized)
    n = 8 + 8192  # length prefix; provenance and other metadata
    for k in tensors:
        n += (3 * (len(k) + 90) + 2 * (len(k) + 110)) if k in q else len(k) + 90
    return n


def mixed_options(shape: tuple[int, ...], req, is_table: bool) -> list[tuple[int, int, bool]]:
    """(bits, group size, symmetric) choices of one tensor: every width at --group-size; zero-point-free codes
    at widths >= 4 (4 bits fewer per group at 4-bit; the measured damage decides where they pay, and weights
    already on a symmetric grid, e.g. Q4_0, lose nothing); the token table also a coarser group (its rows are
    insensitive: fewer scale bytes there pay for wider linear layers)."""
    bits = sorted(req.bits)
    coarse = next((g for g in EMB_COARSE_GROUPS if is_table and g > req.group_size and shape[1] % g == 0), None)
    return ([(b, req.group_size, req.symmetric) for b in bits] + ([(b, coarse, req.symmetric) for b in bits if b < 8] if coarse else [])
            + ([] if req.symmetric else [(b, req.group_size, True) for b in bits if b >= 4]))


def mixed_budget(m: Model, names: list[str], req, emb: str | None = None) -> float:
    """The byte budget of the quantized tensors (--target-bits or --max-size; --sensitivity-only alone:
    everything at the widest bits). Checked from the shapes only, before any calibration work: a
    budget no choice of --bits can meet is an error that names the widths that would meet it."""
    ws = weight_view(m)
    cost = option_bytes(m, req, emb)
    bits = sorted(req.bits)
    n_weights = sum(ws.info(k).numel for k in names)
    # the bytes of everything else; an ONNX graph built from safetensors stores every other tensor as float32
    f32 = m.format != "onnx" and onnx_output(m, req)
    rest = sum(4 * ws.info(k).numel if f32 and ws.info(k).dtype in ("F16", "BF16", "F32") else ws.info(k).nbytes
               for k in ws.keys() if k not in names) + header_bytes(list(ws.keys()), names) + ws.overhead
    if req.target_bits is not None:
        budget = req.target_bits * n_weights / 8
        what = f"--target-bits {req.target_bits}"
        to_unit = lambda b: f"{8 * b / n_weights:.3f} bits per weight"  # noqa: E731
    elif req.max_size is not None:
        budget = req.max_size - rest
        what = f"--max-size {req.max_size}"
        to_unit = lambda b: f"{(b + rest) / 1e6:.2f} MB in all"  # noqa: E731
    else:
        return float(_sizes(ws, cost, names, bits[-1:], req.group_size, req.symmetric)[0])
    # the cheapest plan the planner can make: every tensor at its cheapest option (zero-point-free codes at
    # 4 and 8 bits, the token table's coarser group), so a budget only those options meet is not refused
    need = sum(min(cost(k, ws.info(k).shape, b, g, sym) for b, g, sym in mixed_options(ws.info(k).shape, req, k == emb))
               for k in names)
    if budget < need:
        fits = [b for b in QA.BITS if _sizes(ws, cost, names, [b], req.group_size, req.symmetric)[0] <= budget]
        if fits:
            runnable = [b for b in fits if b in QA.RUNNABLE_BITS]
            wider = sorted(set(bits) | {max(runnable or fits)} | {8})
            hint = f"; --bits {','.join(map(str, wider))} can meet it"
        elif bits[0] != QA.BITS[0]:
            hint = f"; even {QA.BITS[0]} bits everywhere need {to_unit(_sizes(ws, cost, names, QA.BITS[:1], req.group_size, req.symmetric)[0])}"
        else:
            hint = ""
        raise InputError(f"{what} is infeasible with --bits {','.join(map(str, bits))}: all tensors at {bits[0]} bits "
                         f"need {to_unit(need)}{hint}")
    return budget


def plan_mixed(m: Model, names: list[str], emb: str | None, req, progress=None,
               say: Callable[[str], None] = lambda s: None, grams: dict | None = None) -> tuple[dict[str, int], dict[str, Any], dict]:
    """Per-tensor bits under the budget. Returns ({tensor: bits}, report, {tensor: chosen QTensor}).

    With GPTQ (grams given) a linear layer's error is measured in output space,
    tr(ΔW H ΔWᵀ)/mean(diag H), which equals ‖ΔW‖² when the inputs are white. The Linears that share an input Gram
    matrix (q, k, v) are quantized at every width by one GPTQ run (`QA.gptq_many`: one factorization, one column
    loop). The token table is quantized at each width on the rows the calibration texts use only (the others do not
    change the measured loss; round-to-nearest treats rows independently, so these are exactly the whole table's
    codes of those rows), and whole at the width chosen."""
    grams = grams or {}
    t0 = time.perf_counter()
    ws = weight_view(m)
    cost = option_bytes(m, req, emb)
    bits = sorted(req.bits)
    budget = mixed_budget(m, names, req, emb)  # before any heavy work: an infeasible target fails at once
    texts = calibration_texts(req.calib)
    probe = SensitivityProbe(m, names, emb, texts, req.threads)
    workers = cpu_threads(req.threads)  # round-to-nearest's threads
    measured = getattr(req, "sensitivity", "measured") == "measured"
    rng = np.random.default_rng(req.seed)
    if progress is not None:
        progress.reset(total=len(names))
    omega: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    # one option list for every tensor (the token table's); a coarse-group option of another tensor repeats its
    # own --group-size option of the same width
    options = mixed_options(ws.info(emb).shape if emb is not None else (0, 1), req, emb is not None)
    own = [j for j, (b, g, sym) in enumerate(options) if g == req.group_size]  # the options every tensor computes
    scaled_from = _scaled_options(options)
    costs = np.zeros((len(names), len(options)))
    errs = np.zeros((len(names), len(options)))
    damages = np.zeros((len(names), len(options)))
    cache: dict[tuple[str, int], Any] = {}
    rows_w = used = None
    if emb in names:
        c = np.zeros(ws.info(emb).shape[0])
        counts = probe.token_counts
        c[: min(len(counts), len(c))] = counts[: len(c)]
        alpha = 1.0
        rows_w = (c + alpha) / (c[c > 0].mean() + alpha) if (c > 0).any() else np.ones(len(c))
        used = np.flatnonzero(c > 0)
    gptq_done: dict[str, list] = {}  # a Linear's QTensors at the `own` options, made with the others sharing its H
    for i, k in enumerate(names):
        W = ws.get(k)
        if measured:
            omega[k] = stderr[k] = None
        else:
            omega[k], stderr[k], _ = probe.hutchinson(k, req.probes, rng)
        if grams.get(k) is not None and k not in gptq_done:
            H = grams[k]
            group = [n for n in names if n != emb and grams.get(n) is H]
            done = QA.gptq_many([ws.get(n) for n in group], H, [(options[j][0], options[j][2]) for j in own], req.group_size)
            gptq_done.update(zip(group, done))
        sq: dict[int, float] = {}  # ‖Q(W) − W‖² of each option (the token table: its used rows, weighted)
        for j, (b, g, sym) in enumerate(options):
            if g != req.group_size and k != emb:  # only the token table takes the coarse group
                j0 = bits.index(b)
                cache[(k, j)], costs[i, j], errs[i, j], damages[i, j] = cache[(k, j0)], costs[i, j0], errs[i, j0], damages[i, j0]
                continue
            if k == emb:
                q = QA.quantize(np.asarray(W[used], np.float32) if measured else W, b, g, sym, workers=workers)
            else:
                q = gptq_done[k][own.index(j)] if k in gptq_done else QA.quantize_matrix(W, b, g, sym, workers=workers)
            cache[(k, j)] = q
            costs[i, j] = cost(k, W.shape, b, g, sym)
            if not measured:
                errs[i, j] = _error(W, q, grams.get(k), rows_w if k == emb else None)
                damages[i, j] = 0.5 * omega[k] * errs[i, j]
                continue
            sq[j] = _error(np.asarray(W[used] if k == emb else W, np.float32), q, None, rows_w[used] if k == emb else None)
            j0 = scaled_from.get(j)
            if sq[j] == 0:  # the weights sit on this grid (e.g. a checkpoint dequantized from Q4_0): nothing changes
                damages[i, j] = 0.0
            elif j0 is not None and sq[j0] > 0:  # quadratic in the error: the narrower width's measured loss, scaled
                damages[i, j] = damages[i, j0] * sq[j] / sq[j0]
            else:  # the real loss of the pooled embedding with this tensor alone at b bits
                damages[i, j] = probe.measured_damage(k, q)
        gptq_done.pop(k, None)
        if progress is not None:
            progress.update(1)
    picks, chosen, total_damage = knapsack.solve(costs, damages, budget)  # feasible: checked by mixed_budget
    guard = _uniform_guard(probe, names, options, req.group_size, costs, budget, picks, cache)
    if guard is not None and guard["chose"] == "uniform":
        picks = np.full(len(names), guard.pop("option"))
        chosen, total_damage = float(costs[:, picks[0]].sum()), float(damages[:, picks[0]].sum())
    elif guard is not None:
        guard.pop("option")
    probe.close()
    plan = {k: options[int(p)][0] for k, p in zip(names, picks)}
    report_cache = {k: cache[(k, int(p))] for k, p in zip(names, picks)}  # the chosen quantizations, reused for the output
    cache.clear()
    if emb in names and measured:  # the whole table at its chosen width
        b, g, sym = options[int(picks[names.index(emb)])]
        report_cache[emb] = QA.quantize(ws.get(emb), b, g, sym, workers=workers)
    for i, k in enumerate(names):
        if measured:  # the error of the chosen option only (it feeds the report, not the plan)
            errs[i, int(picks[i])] = _error(ws.get(k), report_cache[k], grams.get(k), rows_w if k == emb else None)
    table = [{"tensor": k, "omega": omega[k], "omega_stderr": stderr[k], "bits": plan[k], "group_size": report_cache[k].group_size,
              "symmetric": report_cache[k].zeros is None,
              "rel_error": errs[i, int(picks[i])] / max(_sq_norm(ws.get(k)), 1e-30),
              "predicted_damage": float(damages[i, int(picks[i])]), "bytes": int(costs[i, int(picks[i])])}
             for i, k in enumerate(names)]
    report = {"bits": bits, "budget_bytes": int(budget), "chosen_bytes": int(chosen), "predicted_damage": total_damage,
              "sensitivity": "measured" if measured else "hessian", "uniform_check": guard, "probes": req.probes, "calib_texts": len(texts), "forward_passes": probe.runs,
              "seconds": round(time.perf_counter() - t0, 1), "table": table}
    return plan, report, report_cache


def _scaled_options(options: list[tuple[int, int, bool]]) -> dict[int, int]:
    """{option: the option its measured damage is scaled from}: each 8-bit option from the widest narrower option of
    the same group size and zero points, when that is 3 or 4 bits. At 8 bits the error is 16x smaller than at 4 and
    the loss quadratic in it, so the 4-bit loss times the ratio of the squared weight errors stands for a forward
    pass. Measured on all-MiniLM-L6-v2 (its 36 Linears, GPTQ): the 8-bit loss is 0.35% of the 4-bit one (median),
    and 0.6-1.8x its scaled estimate, so no choice between 4 and 8 bits turns on the difference. With --bits 2,4,8
    a Linear runs 3 of its 5 options."""
    out = {}
    for j, (b, g, sym) in enumerate(options):
        if b < 8:
            continue
        narrower = [(b0, j0) for j0, (b0, g0, s0) in enumerate(options) if g0 == g and s0 == sym and 3 <= b0 < b]
        if narrower:
            out[j] = max(narrower)[1]
    return out


def _sq_norm(W: np.ndarray) -> float:
    """‖W‖² in float64, by chunks of rows (the token table is 250k rows: no float64 copy of it)."""
    return float(sum(np.einsum("ij,ij->", c := np.asarray(W[r0 : r0 + QA.ROW_CHUNK], np.float32), c, dtype=np.float64)
                     for r0 in range(0, W.shape[0], QA.ROW_CHUNK)))


def _error(W: np.ndarray, q, H: np.ndarray | None, rows_w: np.ndarray | None) -> float:
    """The error of one quantization in the report's units: output space with a Gram matrix (QA.weighted_error),
    else ‖ΔW‖², each row weighted by `rows_w` (the token table: how often the texts use its token, smoothed)."""
    if H is not None:
        return QA.weighted_error(W, q, H)
    if rows_w is None:
        return QA.quant_error(W, q)
    total = 0.0
    for r0 in range(0, W.shape[0], QA.ROW_CHUNK):
        r1 = min(r0 + QA.ROW_CHUNK, W.shape[0])
        d = QA.dequantize(q.codes[r0:r1], q.scales[r0:r1], None if q.zeros is None else q.zeros[r0:r1], q.bits,
                          q.group_size) - np.asarray(W[r0:r1], np.float32)
        total += float((np.einsum("ij,ij->i", d, d, dtype=np.float64) * rows_w[r0:r1]).sum())
    return total


def _uniform_guard(probe: SensitivityProbe, names, options, group_size, costs, budget, picks, cache) -> dict[str, Any] | None:
    """A mixed plan must not lose more than the uniform model that fits the same budget: measure both
    (all tensors replaced at once, on the calibration texts) and keep the better. The uniform models are the
    widest width at --group-size that fits, with and without zero points when both are options. None when no
    uniform width fits, or when the plan is already uniform."""
    fits = [j for j, (b, g, _) in enumerate(options) if g == group_size and costs[:, j].sum() <= budget]
    if not fits:
        return None
    widest = max(options[j][0] for j in fits)
    candidates = [j for j in fits if options[j][0] == widest]
    if len(candidates) == 1 and all(int(p) == candidates[0] for p in picks):
        return None
    mixed_loss = probe.loss_with({k: cache[(k, int(p))] for k, p in zip(names, picks)})
    losses = {j: probe.loss_with({k: cache[(k, j)] for k in names}) for j in candidates}
    ju = min(candidates, key=lambda j: (losses[j], j))
    return {"bits": widest, "symmetric": bool(options[ju][2]), "uniform_loss": losses[ju], "mixed_loss": mixed_loss,
            "chose": "uniform" if losses[ju] <= mixed_loss else "mixed", "option": ju}
