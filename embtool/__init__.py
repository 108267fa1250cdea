"""embtool: shrink transformer text-embedding models and run them, without PyTorch.

The public API (see README "Python API"): `Encoder`, `trim_vocab`, `quantize`, `factorize`, `init_subwords`,
`inspect`, `search`, `embed`, `export_onnx`, `dequantize`, `defactorize` (typed `Result`s), `open_model`, `ModelRef`
(a model path or Hub id with --tokenizer / --onnx-file / --cache-dir settings), and, with the `ray` extra, `embed_dataset` (the `embtool.ray` subpackage holds the rest: `session`, a local Ray on 127.0.0.1 only). Names are imported lazily, so `import embtool` (and `embtool --version`) stay light.
"""

from embtool._version import __version__

_LAZY = {
    "Encoder": "embtool.api",
    "open_model": "embtool.api",
    "ModelRef": "embtool.api",
    "quiet_downloads": "embtool.api",
    "Result": "embtool.api",
    "trim_vocab": "embtool.api",
    "quantize": "embtool.api",
    "factorize": "embtool.api",
    "init_subwords": "embtool.api",
    "inspect": "embtool.api",
    "search": "embtool.api",
    "embed": "embtool.api",
    "shrink": "embtool.api",
    "embed_dataset": "embtool.api",
    "export_onnx": "embtool.api",
    "dequantize": "embtool.api",
    "defactorize": "embtool.api",
    "SearchHits": "embtool.api",
    "sample_corpus": "embtool.api",
    "open_index": "embtool.api",
    "rescore_depth": "embtool.api",
    "read_embeddings": "embtool.api",
    "write_embeddings": "embtool.api",
    "compare_embeddings": "embtool.api",
    "compare_models": "embtool.api",
    "quantizable_tensors": "embtool.api",
    "quantized_bytes": "embtool.api",
    "frequent_words": "embtool.api",
    "TensorInfo": "embtool.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'embtool' has no attribute {name!r}")
