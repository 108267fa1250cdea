"""tokenizer.json (Hugging Face `tokenizers` format): reading, validation, and a runnable tokenizer.

The file's own truncation and padding settings are always overridden: embtool pads per batch
itself and truncates to the limit the user asks for.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tokenizers import Tokenizer

from embtool.core.errors import CorruptFile, InputError, Unsupported

MODEL_TYPES = ("WordPiece", "BPE", "Unigram")


class TokenizerJson:
    """A tokenizer.json. The runnable tokenizer comes straight from the file (Rust parser); the JSON
    document (`data`, edited in place by tokenizer surgery) is parsed only when asked for."""

    def __init__(self, data: dict[str, Any] | None = None, path: Path | None = None):
        self._data = data
        self.path = Path(path) if path else None
        self._runtime: Tokenizer | None = None

    @classmethod
    def load(cls, path: Path) -> "TokenizerJson":
        tj = cls(None, Path(path))
        tj.runtime()  # the tokenizers library validates the whole file
        if tj.model_type not in MODEL_TYPES:
            raise Unsupported(f"{path}: tokenizer model type {tj.model_type!r} is not supported "
                              f"(supported: {', '.join(MODEL_TYPES)})")
        return tj

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            assert self.path is not None
            try:
                text = self.path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise CorruptFile(f"{self.path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
            except OSError as e:
                raise CorruptFile(f"{self.path}: cannot read: {e.strerror}") from e
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise CorruptFile(f"{self.path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
            except RecursionError:
                raise CorruptFile(f"{self.path}: JSON nested too deeply to be a tokenizer") from None
            self._data = self._validate(data, self.path)
        return self._data

    @classmethod
    def from_data(cls, data: Any, path: Path | None = None) -> "TokenizerJson":
        tj = cls(cls._validate(data, path), path)
        tj.runtime()
        return tj

    @staticmethod
    def _validate(data: Any, path: Path | None) -> dict[str, Any]:
        where = str(path) if path else "tokenizer.json"
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise CorruptFile(f"{where}: no 'model' object; not a tokenizers tokenizer.json")
        mtype = data["model"].get("type")
        if mtype is None:  # older files omit it; infer from fields
            m = data["model"]
            mtype = "BPE" if "merges" in m else "WordPiece" if "continuing_subword_prefix" in m else (
                "Unigram" if isinstance(m.get("vocab"), list) else None
            )
            data["model"]["type"] = mtype
        if mtype not in MODEL_TYPES:
            raise Unsupported(f"{where}: tokenizer model type {mtype!r} is not supported "
                              f"(supported: {', '.join(MODEL_TYPES)})")
        vocab = data["model"].get("vocab")
        if mtype == "Unigram":
            if not isinstance(vocab, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in vocab
            ):
                raise CorruptFile(f"{where}: Unigram vocab must be a list of [piece, score] pairs")
        else:
            if not isinstance(vocab, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()
            ):
                raise CorruptFile(f"{where}: {mtype} vocab must map tokens to integer ids")
            ids = sorted(vocab.values())
            if ids and (ids[0] < 0 or len(set(ids)) != len(ids)):
                raise CorruptFile(f"{where}: vocab ids must be distinct and non-negative")
            if mtype == "WordPiece" and data["model"].get("unk_token") not in vocab:  # tokenizers fails on the first unknown character
                raise CorruptFile(f"{where}: the WordPiece unk_token {data['model'].get('unk_token')!r} is not in its vocab")
        added = data.get("added_tokens") or []
        if not isinstance(added, list) or not all(
            isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("content"), str) for a in added
        ):
            raise CorruptFile(f"{where}: added_tokens must be a list of {{id, content}} objects")
        return data

    @property
    def model_type(self) -> str:
        if self._data is not None:
            return self._data["model"]["type"]
        return type(self.runtime().model).__name__

    @property
    def is_byte_level(self) -> bool:
        return "ByteLevel" in json.dumps(self.data.get("pre_tokenizer")) or "ByteLevel" in json.dumps(
            self.data.get("decoder")
        )

    def vocab_size(self) -> int:
        """Size of the id space: the largest id + 1 over the model vocab and added tokens."""
        if self._data is None:
            tok = self.runtime()
            n = tok.get_vocab_size(with_added_tokens=True)
            return max([n - 1, *tok.get_added_tokens_decoder().keys()]) + 1
        return len(self.id_to_token())

    def id_to_token(self) -> list[str | None]:
        m = self.data["model"]
        if self.model_type == "Unigram":
            toks: list[str | None] = [p[0] for p in m["vocab"]]
        else:
            n = max(m["vocab"].values(), default=-1) + 1
            toks = [None] * n
            for t, i in m["vocab"].items():
                toks[i] = t
        for a in self.data.get("added_tokens") or []:
            if a["id"] >= len(toks):
                toks.extend([None] * (a["id"] + 1 - len(toks)))
            if toks[a["id"]] is None:
                toks[a["id"]] = a["content"]
        return toks

    def special_tokens(self) -> dict[str, int]:
        if self._data is None:
            return {t.content: i for i, t in sorted(self.runtime().get_added_tokens_decoder().items()) if t.special}
        return {a["content"]: a["id"] for a in self.data.get("added_tokens") or [] if a.get("special")}

    def runtime(self) -> Tokenizer:
        """A `tokenizers.Tokenizer` with the file's padding and truncation switched off."""
        if self._runtime is None:
            try:
                if self._data is None:
                    assert self.path is not None
                    tok = Tokenizer.from_file(str(self.path))
                else:
                    data = dict(self._data)
                    data["truncation"] = None
                    data["padding"] = None
                    tok = Tokenizer.from_str(json.dumps(data))
                tok.no_truncation()
                tok.no_padding()
            except BaseException as e:  # the Rust side raises a bare Exception on any malformed field
                if not isinstance(e, Exception) and not is_panic(e):
                    raise
                where = str(self.path) if self.path else "tokenizer.json"
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise CorruptFile(f"{where}: the tokenizers library rejects it: {msg}") from e
            self._runtime = tok
        return self._runtime

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the file, or of the document when it has no file."""
        import hashlib

        raw = self.path.read_bytes() if self.path is not None and self.path.is_file() else self.dumps().encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def dumps(self) -> str:
        return json.dumps(self.data, ensure_ascii=False, indent=2)


# ----------------------------------------------------------------------------------------------
# Calling the tokenizer: Rust panics become one clear error
# ----------------------------------------------------------------------------------------------

def is_panic(e: BaseException) -> bool:
    """A Rust panic inside `tokenizers` (pyo3's PanicException derives from BaseException, so
    `except Exception` does not see it), e.g. a pre-tokenizer regex that backtracks catastrophically."""
    return type(e).__name__ == "PanicException"


@contextmanager
def _native_stderr_held() -> Iterator[list[bool]]:
    """Hold what native code writes to file descriptor 2 during the block (Rust prints a panic message
    and, with RUST_BACKTRACE, a backtrace there); replay it afterwards unless the caller set flag[0]
    (the panic was turned into an error of our own)."""
    flag = [False]
    try:
        saved = os.dup(2)
    except OSError:
        yield flag
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield flag
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not flag[0] and held.tell():
                held.seek(0)
                os.write(2, held.read())


def _snippet(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def encode_batch(tok: Tokenizer, texts: list[str], *, add_special_tokens: bool = True, first: int = 1,
                 what: str = "text", fast: bool = False) -> list:
    """`tok.encode_batch(texts)`; a panic of the tokenizer becomes one InputError naming the text that
    causes it (`what` `first + i`, e.g. "input line 17"), found by encoding the texts one by one."""
    run = getattr(tok, "encode_batch_fast", None) if fast else None
    run = run or tok.encode_batch
    with _native_stderr_held() as quiet:
        try:
            return run(texts, add_special_tokens=add_special_tokens)
        except BaseException as e:
            if not is_panic(e):
                raise
            quiet[0] = True
            msg = str(e).splitlines()[0] if str(e) else "panic"
    with _native_stderr_held() as quiet:
        for i, t in enumerate(texts):
            try:
                tok.encode(t, add_special_tokens=add_special_tokens)
            except BaseException as e:
                if not is_panic(e):
                    raise
                quiet[0] = True
                raise InputError(f"{what} {first + i} ({_snippet(t)}): the tokenizer fails on it ({msg}); its tokenizer.json "
                                 "probably has a pre-tokenizer regex that backtracks catastrophically on this text") from None
        quiet[0] = True
    raise InputError(f"the tokenizer fails on a batch of {len(texts)} texts ({msg}) but on none of them alone")


# ----------------------------------------------------------------------------------------------
# Vocabulary side files: the slow tokenizers' copies of the vocabulary beside tokenizer.json
# ----------------------------------------------------------------------------------------------

SIDE_FILES_REWRITTEN = ("vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")
SIDE_FILES_DROPPED = ("sentencepiece.bpe.model", "spiece.model", "sentencepiece.model", "tokenizer.model",
                      "spm.model", "source.spm", "target.spm")


def vocab_side_files(doc: dict[str, Any], present: list[str], remap: dict[int, int]) -> tuple[dict[str, str], list[str]]:
    """New contents for the vocabulary side files in `present` after the tokenizer became `doc`
    (old id -> new id: `remap`), and the ones that cannot be rewritten (sentencepiece models) to drop.

    vocab.txt (BertTokenizer: one token a line, line number = id) and vocab.json / merges.txt
    (GPT-2 / RoBERTa tokenizers) are written from `doc`; added_tokens.json gets its ids remapped."""
    tj = TokenizerJson(doc)
    out: dict[str, str] = {}
    model = doc["model"]
    if "vocab.txt" in present and tj.model_type == "WordPiece":
        toks = tj.id_to_token()
        out["vocab.txt"] = "".join((t if t is not None else f"[unused{i}]") + "\n" for i, t in enumerate(toks))
    if "vocab.json" in present and tj.model_type == "BPE":
        out["vocab.json"] = json.dumps(dict(sorted(model["vocab"].items(), key=lambda kv: kv[1])), ensure_ascii=False)
    if "merges.txt" in present and tj.model_type == "BPE":
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        out["merges.txt"] = "#version: 0.2\n" + "".join(m + "\n" for m in merges)
    drop = [f for f in present if f in SIDE_FILES_DROPPED or (f in ("vocab.txt", "vocab.json", "merges.txt") and f not in out)]
    return out, drop


def remap_added_tokens_json(raw: Any, remap: dict[int, int]) -> dict[str, int]:
    """added_tokens.json ({token: id}) with the new ids; tokens whose id was dropped are left out."""
    if not isinstance(raw, dict):
        return {}
    return {t: remap[i] for t, i in raw.items() if isinstance(i, int) and i in remap}
