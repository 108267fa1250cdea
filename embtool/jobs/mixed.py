"""Mixed precision judged on what users lose, with forward passes only.

Default (`sensitivity="measured"`): the damage of b bits for a tensor is the measured loss L of the pooled
embedding on calibration texts with that tensor alone quantized to b bits (one forward pass per tensor and
width), and the knapsack adds these up. The Hessian-trace estimate below (`sensitivity="hessian"`) is kept
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

The probed weights are graph inputs whose numpy buffers are wrapped by OrtValues without a copy, so one
onnxruntime session serves every probe: a probe perturbs the buffer in place, runs, and restores it. An ONNX
input is probed in its own graph, its MatMul weights and token table turned into such inputs
(runtime.graphs.fed_encoder), so it gets the same plan as the same model in safetensors.
For the token-embedding table only the rows the calibration texts use carry curvature: those rows are
probed, and each row's predicted damage is weighted by how often its token occurs (smoothed).
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

EMB_COARSE_GROUPS = (128, 64, 32)  # the token table's alternative group size in mixed precision: the first that fits
SIGMA_REL = 0.05  # probe size relative to the tensor's RMS (the scale of 4-bit quantization noise)


class SensitivityProbe:
    """One session over the calibration batch with the probed weights as zero-copy graph inputs."""

    def __init__(self, model: Model, names: list[str], emb: str | None, texts: list[str], threads: int = 0,
                 max_length: int = 64):
        from embtool.runtime.graphs import fed_encoder
        from embtool.runtime.encoder import EmbedSettings, Encoder, default_max_length, graph_session

        self.model = model
        self.emb = emb
        built, self.fed = fed_encoder(model, names)
        # writable copies: a probe perturbs them in place; the session reads the same memory
        self.arrays: dict[str, np.ndarray] = {k: np.array(v, dtype=v.dtype, copy=True) for k, v in built.feeds.items()}
        session = graph_session(built, threads, feeds=self.arrays)
        self.enc = Encoder(model, EmbedSettings(max_length=min(max_length, default_max_length(model)), normalize=True),
                           session=session)
        self.ids, self.mask = self.enc.padded(self.enc.tokenize(texts))
        self.token_counts = np.bincount(self.ids[self.mask > 0].ravel())
        self.f0 = self._embed()
        self.runs = 0

    def feed_name(self, weight: str) -> str:
        """The graph input that carries `weight` (a Linear's as its transpose); "" when the graph does not read it."""
        return self.fed.get(weight, "")

    def _embed(self) -> np.ndarray:
        x = self.enc.run_batch(self.ids, self.mask)
        return P.normalize(x)

    def loss(self) -> float:
        self.runs += 1
        d = self._embed() - self.f0
        return float(np.mean(np.sum(d.astype(np.float64) ** 2, 1)))

    def used_rows(self) -> np.ndarray:
        return np.flatnonzero(self.token_counts)

    def hutchinson(self, weight: str, probes: int, rng: np.random.Generator, sigma_rel: float = SIGMA_REL) -> tuple[float, float, int]:
        """(Ω = tr(H)/n, its standard error, n) for one weight, by `probes` Rademacher probes.
        A weight the encoder graph does not use (e.g. a pooler) has Ω = 0 exactly."""
        if self.feed_name(weight) not in self.arrays:
            return 0.0, 0.0, 0
        arr = self.arrays[self.feed_name(weight)]
        if weight == self.emb:
            rows = self.used_rows()
            view_idx = rows
            W0 = arr[rows].copy()
        else:
            view_idx = None
            W0 = arr.copy()
        n = W0.size
        sigma = sigma_rel * float(np.sqrt(np.mean(W0.astype(np.float64) ** 2))) or 1e-3
        samples = []
        for _ in range(probes):
            z = rng.integers(0, 2, size=W0.shape).astype(np.float32) * 2 - 1
            vals = []
            for sign in (1.0, -1.0):
                if view_idx is None:
                    arr[...] = W0 + sign * sigma * z
                else:
                    arr[view_idx] = W0 + sign * sigma * z
                vals.append(self.loss())
            samples.append((vals[0] + vals[1]) / sigma**2)
        if view_idx is None:
            arr[...] = W0
        else:
            arr[view_idx] = W0
        s = np.asarray(samples)
        se = float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("nan")
        return float(s.mean() / n), se / n, n

    def loss_with(self, values: dict[str, np.ndarray]) -> float:
        """L with several weights replaced at once (e.g. a whole quantization plan)."""
        saved = {}
        try:
            for weight, v in values.items():
                if self.feed_name(weight) in self.arrays:
                    arr = self.arrays[self.feed_name(weight)]
                    saved[weight] = arr.copy()
                    arr[...] = v if weight == self.emb else v.T
            return self.loss()
        finally:
            for weight, W0 in saved.items():
                self.arrays[self.feed_name(weight)][...] = W0

    def measured_damage(self, weight: str, new_value: np.ndarray) -> float:
        """L with one weight replaced (e.g. by its quantized version): the real damage."""
        if self.feed_name(weight) not in self.arrays:
            return 0.0
        arr = self.arrays[self.feed_name(weight)]
        W0 = arr.copy()
        arr[...] = new_value if weight == self.emb else new_value.T
        try:
            return self.loss()
        finally:
            arr[...] = W0


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
    tr(ΔW H ΔWᵀ)/mean(diag H), which equals ‖ΔW‖² when the inputs are white."""
    grams = grams or {}
    t0 = time.perf_counter()
    ws = weight_view(m)
    cost = option_bytes(m, req, emb)
    bits = sorted(req.bits)
    budget = mixed_budget(m, names, req, emb)  # before any heavy work: an infeasible target fails at once
    texts = calibration_texts(req.calib)
    probe = SensitivityProbe(m, names, emb, texts, req.threads)
    measured = getattr(req, "sensitivity", "measured") == "measured"
    rng = np.random.default_rng(req.seed)
    if progress is not None:
        progress.reset(total=len(names))
    omega: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    counts = probe.token_counts
    # one option list for every tensor (the token table's); a coarse-group option of another tensor repeats its
    # own --group-size option of the same width
    options = mixed_options(ws.info(emb).shape if emb is not None else (0, 1), req, emb is not None)
    costs = np.zeros((len(names), len(options)))
    errs = np.zeros((len(names), len(options)))
    damages = np.zeros((len(names), len(options)))
    cache: dict[tuple[str, int], Any] = {}
    for i, k in enumerate(names):
        W = ws.get(k)
        if measured:
            omega[k] = stderr[k] = None
        else:
            omega[k], stderr[k], _ = probe.hutchinson(k, req.probes, rng)
        rows_w = None
        if k == emb:
            c = np.zeros(W.shape[0])
            c[: min(len(counts), W.shape[0])] = counts[: W.shape[0]]
            alpha = 1.0
            used = c > 0
            rows_w = (c + alpha) / (c[used].mean() + alpha) if used.any() else np.ones(W.shape[0])
        for j, (b, g, sym) in enumerate(options):
            if g != req.group_size and k != emb:  # only the token table takes the coarse group
                j0 = bits.index(b)
                cache[(k, j)], costs[i, j], errs[i, j], damages[i, j] = cache[(k, j0)], costs[i, j0], errs[i, j0], damages[i, j0]
                continue
            q = QA.quantize_matrix(W, b, g, sym, grams.get(k))
            cache[(k, j)] = q
            if k in grams:
                errs[i, j] = QA.weighted_error(W, q, grams[k])
            else:
                d = q.dequantize() - np.asarray(W, np.float32)
                per_row = np.einsum("ij,ij->i", d, d, dtype=np.float64)
                errs[i, j] = float((per_row * rows_w).sum()) if rows_w is not None else float(per_row.sum())
            costs[i, j] = cost(k, W.shape, b, g, sym)
            # measured: the real loss of the pooled embedding with this tensor alone at b bits
            damages[i, j] = probe.measured_damage(k, q.dequantize()) if measured else 0.5 * omega[k] * errs[i, j]
        if progress is not None:
            progress.update(1)
    picks, chosen, total_damage = knapsack.solve(costs, damages, budget)  # feasible: checked by mixed_budget
    guard = _uniform_guard(probe, names, options, req.group_size, costs, budget, picks, cache)
    if guard is not None and guard["chose"] == "uniform":
        picks = np.full(len(names), guard.pop("option"))
        chosen, total_damage = float(costs[:, picks[0]].sum()), float(damages[:, picks[0]].sum())
    elif guard is not None:
        guard.pop("option")
    plan = {k: options[int(p)][0] for k, p in zip(names, picks)}
    report_cache = {k: cache[(k, int(p))] for k, p in zip(names, picks)}  # the chosen quantizations, reused for the output
    cache.clear()
    table = [{"tensor": k, "omega": omega[k], "omega_stderr": stderr[k], "bits": plan[k], "group_size": report_cache[k].group_size,
              "symmetric": report_cache[k].zeros is None,
              "rel_error": errs[i, int(picks[i])] / max(float((np.asarray(ws.get(k), np.float64) ** 2).sum()), 1e-30),
              "predicted_damage": float(damages[i, int(picks[i])]), "bytes": int(costs[i, int(picks[i])])}
             for i, k in enumerate(names)]
    report = {"bits": bits, "budget_bytes": int(budget), "chosen_bytes": int(chosen), "predicted_damage": total_damage,
              "sensitivity": "measured" if measured else "hessian", "uniform_check": guard, "probes": req.probes, "calib_texts": len(texts), "forward_passes": probe.runs,
              "seconds": round(time.perf_counter() - t0, 1), "table": table}
    return plan, report, report_cache


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
    mixed_loss = probe.loss_with({k: cache[(k, int(p))].dequantize() for k, p in zip(names, picks)})
    losses = {j: probe.loss_with({k: cache[(k, j)].dequantize() for k in names}) for j in candidates}
    ju = min(candidates, key=lambda j: (losses[j], j))
    return {"bits": widest, "symmetric": bool(options[ju][2]), "uniform_loss": losses[ju], "mixed_loss": mixed_loss,
            "chose": "uniform" if losses[ju] <= mixed_loss else "mixed", "option": ju}
