"""Running a built encoder graph in consecutive segments, for sequential calibration (GPTQ layer by layer).

Sequential GPTQ needs, before it quantizes a stage of Linear layers, the inputs of that stage computed by the
model whose earlier stages are already quantized. Running the whole model once per stage would cost a forward
pass per stage; instead `StagedRunner` keeps, per calibration batch, the tensors that cross a cut of the graph
(the "frontier": every tensor produced before the cut and consumed after it) and runs only the nodes between
one cut and the next, as a small onnxruntime session of their own. The Linear weights are graph inputs fed from
numpy buffers the caller owns (`arrays`), so replacing a stage's weights by their dequantized values between two
segments changes what every later segment computes.

The cut before a stage lies just before the first node that reads one of the stage's weights, so the cached
frontier depends only on weights of earlier stages (already replaced) — never on the stage's own float weights
nor on later ones. Nodes are in topological order (the builders append them in order), which is all this needs;
it works for every graph `build_encoder` makes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from embtool.runtime.bert_graph import BuiltGraph
from embtool.core.threads import cpu_threads
from embtool.runtime.encoder import proto_session


class StagedRunner:
    """`built`: an encoder graph whose stage weights are fed (`build_encoder(..., feed_weights=...)`);
    `arrays`: the numpy buffers of its fed weights (the caller replaces entries between stages);
    `batches`: the calibration batches, each a dict of the graph's data inputs (input_ids, attention_mask, ...)."""

    def __init__(self, built: BuiltGraph, arrays: dict[str, np.ndarray], batches: list[dict[str, np.ndarray]],
                 threads: int = 0):
        self.graph = built.graph
        self.opsets = built.opsets
        self.arrays = arrays
        self.threads = threads
        self.nodes = list(self.graph.node)
        self.producer: dict[str, int] = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.last_use: dict[str, int] = {}
        self.first_use: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for x in n.input:
                if x:
                    self.last_use[x] = i
                    self.first_use.setdefault(x, i)
        self.inits = {t.name: t for t in self.graph.initializer}
        self.graph_inputs = {i.name: i for i in self.graph.input}
        self.data_inputs = [n for n in self.graph_inputs if n not in arrays]
        self.state: list[dict[str, np.ndarray]] = [{k: b[k] for k in self.data_inputs} for b in batches]
        self.cut = -1  # index of the last node whose outputs are in (or behind) the cached frontier
        self.segments = 0

    def first_use_of(self, feeds: list[str]) -> int:
        """Index of the first node reading any of the fed weights `feeds`."""
        uses = [self.first_use[f] for f in feeds if f in self.first_use]
        if not uses:
            raise ValueError(f"no node of the graph reads {', '.join(feeds)}")
        return min(uses)

    def _frontier(self, cut: int) -> set[str]:
        """Node outputs produced at or before node `cut` and read after it."""
        return {x for x, i in self.producer.items() if i <= cut and self.last_use.get(x, -1) > cut}

    def advance(self, targets: list[str], stage_feeds: list[str]):
        """Yield, batch by batch, {target: value} for the tensors `targets` computed with the weights now in
        `arrays`, and move the cached frontier to just before the first node that reads `stage_feeds`
        (the weights about to change). Cuts must not move backwards."""
        new_cut = self.first_use_of(stage_feeds) - 1
        if new_cut < self.cut:
            raise ValueError("stages must be visited in graph order")
        keep = self._frontier(new_cut)
        have = set(self.state[0]) if self.state else set(self.data_inputs)
        outputs = sorted((keep | set(targets)) - have)
        sess, in_names = self._segment(outputs, have)
        self.cut = new_cut
        # the weights are the same for every batch of this segment: wrapped once
        weights = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(self.arrays[k])) for k in in_names
                   if k not in have}
        for b, st in enumerate(self.state):
            feeds = {**{k: ort.OrtValue.ortvalue_from_numpy(st[k]) for k in in_names if k in st}, **weights}
            got = dict(zip(outputs, (v.numpy() for v in sess.run_with_ort_values(outputs, feeds)))) if outputs else {}
            values = {**st, **got}
            self.state[b] = {k: v for k, v in values.items() if k in keep or k in self.data_inputs}
            yield b, {t: values[t] for t in targets}

    def _segment(self, outputs: list[str], have: set[str], sample: dict[str, np.ndarray] | None = None
                 ) -> tuple["ort.InferenceSession | None", list[str]]:
        """A session computing `outputs` from the cached tensors `have` (their types as in `sample`, default: the
        first batch's cached tensors), the fed weights and the initializers."""
        if not outputs:
            return None, []
        need: set[int] = set()
        stack = list(outputs)
        seen: set[str] = set()
        inputs: list[str] = []
        while stack:
            x = stack.pop()
            if x in seen or not x:
                continue
            seen.add(x)
            if x in have or x in self.arrays or x in self.graph_inputs:
                inputs.append(x)
                continue
            if x in self.inits:
                continue
            i = self.producer[x]
            if i not in need:
                need.add(i)
                stack.extend(self.nodes[i].input)
        nodes = [self.nodes[i] for i in sorted(need)]
        used = {x for n in nodes for x in n.input}
        inits = [self.inits[x] for x in sorted(used) if x in self.inits]
        infos = []
        for x in sorted(inputs):
            if x in self.graph_inputs:
                infos.append(self.graph_inputs[x])
            else:
                a = (self.state[0] if sample is None else sample)[x]
                infos.append(helper.make_tensor_value_info(x, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim))
        outs = [onnx.ValueInfoProto(name=x) for x in outputs]  # types come from onnxruntime's own inference
        g = helper.make_graph(nodes, f"segment_{self.segments}", infos, outs, inits)
        m = helper.make_model(g, opset_imports=list(self.opsets), producer_name="embtool")
        m.ir_version = 10
        self.segments += 1
        return proto_session(m, self.threads), sorted(inputs)


class SuffixRunner:
    """The graph run from a cut to its end, on tensors the float model computed up to that cut.

    A mixed-precision probe replaces one weight and measures the model's output: every node before the first one
    that reads that weight computes what the float model computes. `SuffixRunner` runs the float model once (one
    session whose outputs are the tensors that cross any of the cuts), keeps each batch's frontier at every cut, and
    then runs a probe from the cut before its weight only: a session of that cut (made on first use, one kept at a
    time) from the cached frontier, the fed weights (`arrays`, with per-run replacements) and the initializers to
    `outputs`.

    `groups`: lists of fed weights; a group's cut lies just before the first node that reads one of them.

    With several threads and batches, the batches run concurrently, each on one thread (the sessions are made
    single-threaded): on these small batches (a few hundred tokens) onnxruntime's own threads mostly wait for
    each other (measured on multilingual-e5-small, 2 cores, batches of 8 texts: 1.9x faster per probe)."""

    def __init__(self, built: BuiltGraph, arrays: dict[str, np.ndarray], batches: list[dict[str, np.ndarray]],
                 groups: list[list[str]], outputs: list[str], threads: int = 0):
        self.arrays = arrays
        self.outputs = list(outputs)
        self.workers = min(cpu_threads(threads), len(batches))
        run = StagedRunner(built, dict(arrays), batches, 1 if self.workers > 1 else threads)
        self.graph_inputs = run.graph_inputs
        order = sorted(range(len(groups)), key=lambda i: run.first_use_of(groups[i]))
        self.cut_of: list[int] = [0] * len(groups)
        self.cuts: list[int] = []
        for i in order:
            cut = run.first_use_of(groups[i]) - 1
            if not self.cuts or cut != self.cuts[-1]:
                self.cuts.append(cut)
            self.cut_of[i] = len(self.cuts) - 1
        # one float pass that outputs every cut's frontier (one session, not one segment per cut)
        keeps = [run._frontier(c) for c in self.cuts]
        wanted = sorted(set().union(*keeps) - set(run.data_inputs)) if keeps else []
        sess, in_names = run._segment(wanted, set(run.data_inputs))
        weights = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arrays[k])) for k in in_names if k in arrays}
        self.pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        data = [{k: b[k] for k in run.data_inputs} for b in batches]
        got = self._map(sess, in_names, wanted, weights, data) if wanted else [[] for _ in data]
        self.frontiers: list[list[dict[str, np.ndarray]]] = [[] for _ in self.cuts]
        for d, values in zip(data, got):
            values = {**d, **dict(zip(wanted, values))}
            for c, keep in enumerate(keeps):
                self.frontiers[c].append({k: values[k] for k in keep | set(run.data_inputs)})
        del sess, weights, got
        self._run = run
        self.sessions: dict[int, tuple] = {}
        self.runs = 0

    def _map(self, sess, in_names: list[str], outputs: list[str], weights: dict, states: list[dict[str, np.ndarray]]
             ) -> list[list[np.ndarray]]:
        """`outputs` of `sess` for each batch state (concurrently on the pool's threads when there is one)."""
        def one(st: dict[str, np.ndarray]) -> list[np.ndarray]:
            feeds = {**{k: ort.OrtValue.ortvalue_from_numpy(st[k]) for k in in_names if k in st}, **weights}
            return [v.numpy() for v in sess.run_with_ort_values(outputs, feeds)]

        return list(self.pool.map(one, states)) if self.pool is not None else [one(st) for st in states]

    def cut_index(self, group: int) -> int:
        return self.cut_of[group]

    def run(self, cut: int, replace: dict[str, np.ndarray] | None = None) -> list[list[np.ndarray]]:
        """`outputs` of every batch, computed from the cached frontier at cut number `cut` (cut_index) with the fed
        weights of `arrays`, those named in `replace` replaced by its values."""
        if cut not in self.sessions:
            # one cut's session at a time: a session keeps its activations' arena (a few hundred MB each for
            # all-mpnet-base-v2), and the planner probes cut after cut
            self.sessions.clear()
            frontier = self.frontiers[cut]
            self.sessions[cut] = self._run._segment(self.outputs, set(frontier[0]), frontier[0])
        sess, in_names = self.sessions[cut]
        replace = replace or {}
        weights = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(replace.get(k, self.arrays.get(k))))
                   for k in in_names if k in self.arrays}
        self.runs += 1
        return self._map(sess, in_names, self.outputs, weights, self.frontiers[cut])

    def close(self) -> None:
        """Stop the worker threads (the sessions go with the runner)."""
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
