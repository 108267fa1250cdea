"""embtool's embeddings of the architecture fixtures (tests/data/arch) against transformers' reference vectors.

    .venv/bin/python tools/experiments/arch_fidelity.py

For each fixture: max |embtool - transformers| and the smallest cosine over its texts, run from the safetensors
folder, from `embtool export-onnx` (onnxruntime kernels) and from `export-onnx --portable` (standard ops).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from embtool.core.model import open_model  # noqa: E402
from embtool.runtime.encoder import EmbedSettings, Encoder  # noqa: E402

ARCH = ROOT / "tests" / "data" / "arch"


def main() -> None:
    for d in sorted(p for p in ARCH.iterdir() if (p / "reference.npz").is_file()):
        texts = json.loads((d / "texts.json").read_text(encoding="utf-8"))
        ref = np.load(d / "reference.npz")["vectors"]
        row = [d.name]
        with tempfile.TemporaryDirectory() as t:
            for label, src, flags in (("safetensors", d, None), ("export-onnx", Path(t) / "o", []),
                                      ("export-onnx --portable", Path(t) / "p", ["--portable"])):
                if flags is not None:
                    subprocess.run([sys.executable, "-m", "embtool", "export-onnx", str(d), "-o", str(src), "--quiet", *flags],
                                   check=True)
                v = Encoder(open_model(src), EmbedSettings(normalize=False)).embed(texts)
                cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
                row.append(f"{label}: max abs diff {np.abs(v - ref).max():.1e}, min cosine {cos.min():.7f}")
        print(" | ".join(row))


if __name__ == "__main__":
    main()
