"""Experiment (issue 17, not adopted): AWQ-style input-channel scaling (Lin et al. 2024) as fake quantization on
all-MiniLM-L6-v2. Each Linear W [out, in] is quantized as Q(W diag(s)) diag(s)^-1 with s = rms(x)^alpha (alpha
from 0, 0.1, ..., 1 per group of Linears sharing an input, chosen by the Gram-weighted output error on 256
training-split paragraphs); 4 bits, group 32, every Linear of the six layers (the token table stays fp32). The
dequantized weights are written into an fp32 copy of the model, measured against the fp32 model on 1,000 held-out
English paragraphs.

In a post-LN encoder (BERT, XLM-R, MPNet) the LayerNorm output is also the residual stream, so the scales cannot be
folded into it as AWQ does in pre-norm decoders: only the attention output projection could take its scale from V;
the others would need an explicit Mul before the quantized MatMul. Run: `.venv/bin/python tools/experiments/awq_experiment.py
rtn gptq` (the model from tests/realmodels.py's cache; about 15 minutes on 2 cores)."""
import os
import shutil
import sys

import numpy as np
from pathlib import Path
from safetensors.numpy import load_file, save_file
from embtool import api
from embtool.core.model import open_model
from embtool.algorithms import quantize as QA
from embtool.jobs.calibrate import gram_matrices

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tests'))
import realmodels  # noqa: E402

SRC = Path(realmodels.minilm())
OUT = Path(os.environ.get('TMPDIR', '/tmp')) / 'embtool-awq'
train, held = api.sample_corpus('en', 'train'), api.sample_corpus('en', 'heldout')
calib, held = train[:256], held[:1000]
m = open_model(str(SRC), need_tokenizer=True)
W = load_file(str(SRC / 'model.safetensors'))
pre = [k for k in W if k.endswith('embeddings.word_embeddings.weight')][0].split('embeddings.')[0]
L = 6
groups = []
for i in range(L):
    b = f'{pre}encoder.layer.{i}.'
    groups += [[b + f'attention.self.{n}.weight' for n in ('query', 'key', 'value')], [b + 'attention.output.dense.weight'],
               [b + 'intermediate.dense.weight'], [b + 'output.dense.weight']]
names = [w for g in groups for w in g]
H, ntok = gram_matrices(m, names, calib, threads=2)
print('tokens', ntok, flush=True)
BITS, G = 4, 32
ALPHAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]

def fake(Wm, Hm, s, method):
    Ws = Wm.astype(np.float64) * s[None, :]
    if method == 'rtn':
        q = QA.quantize(Ws.astype(np.float32), BITS, G)
    else:
        q = QA.gptq(Ws, Hm / np.outer(s, s), BITS, G, act_order=True)
    Wd = QA.dequantize(q.codes, q.scales, q.zeros, BITS, G).astype(np.float64)
    return Wd / s[None, :]

def err(Wm, Wd, Hm):
    D = Wd - Wm.astype(np.float64)
    return float(np.einsum('ij,jk,ik->', D, Hm, D))

def build(method, awq):
    out = dict(W)
    chosen = []
    for g in groups:
        Hm = H[g[0]]
        rms = np.sqrt(np.maximum(np.diag(Hm) / ntok, 1e-12))
        best = None
        for a in (ALPHAS if awq else [0.0]):
            s = rms ** a
            s = s / np.sqrt(s.max() * s.min())
            deq = [fake(W[w], Hm, s, method) for w in g]
            e = sum(err(W[w], d, Hm) for w, d in zip(g, deq))
            if best is None or e < best[0]:
                best = (e, a, deq)
        chosen.append(best[1])
        for w, d in zip(g, best[2]):
            out[w] = d.astype(np.float32)
    tag = f'{method}-{"awq" if awq else "plain"}'
    dst = OUT / tag
    if dst.exists(): shutil.rmtree(dst)
    shutil.copytree(SRC, dst)
    save_file(out, str(dst / 'model.safetensors'))
    r = api.compare_models(str(SRC), str(dst), held, threads=2)
    print(tag, 'alphas', chosen, 'mean cosine %.4f min %.4f recall@10 %.3f' % (r['cosine_mean'], r['cosine_min'], r['recall_at_10']), flush=True)

for method in sys.argv[1:]:
    for awq in (False, True):
        build(method, awq)
