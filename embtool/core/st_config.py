"""The sentence-transformers files of a model folder, read the way sentence-transformers reads them.

One reader for every release's layout (the source of sentence-transformers is the spec):

- `modules.json`: the module pipeline. Old releases (≤ 5.x) name the classes
  `sentence_transformers.models.Pooling`, `...models.Dense`, `...models.Normalize`; 6.x writes
  `sentence_transformers.sentence_transformer.modules.pooling.Pooling`,
  `sentence_transformers.base.modules.dense.Dense`, `sentence_transformers.base.modules.normalize.Normalize`.
  A type is matched by its class name (the last dotted part).
- the Pooling module's `config.json`: 6.x writes `pooling_mode` (a mode or a list of modes) and
  `embedding_dimension`; older releases write one boolean per mode (`pooling_mode_cls_token`,
  `pooling_mode_max_tokens`, `pooling_mode_mean_tokens`, `pooling_mode_mean_sqrt_len_tokens`,
  `pooling_mode_weightedmean_tokens`, `pooling_mode_lasttoken`) and `word_embedding_dimension`. Several
  true booleans concatenate in that order; none true means mean (`_convert_legacy_pooling_kwargs`).
  `include_prompt: false` leaves the prompt's tokens out of the pooling.
- a Dense module's `config.json` (`in_features`, `out_features`, `bias`, `activation_function`,
  `use_residual`) and its weights `model.safetensors` (`linear.weight`, `linear.bias`, `residual.weight`).
- `sentence_bert_config.json` (or the legacy `sentence_<arch>_config.json` names): `max_seq_length`,
  `do_lower_case`, and `tokenizer_args` / `processor_kwargs` (`model_max_length`).
- `config_sentence_transformers.json`: `prompts` and `default_prompt_name`.

The maximum sequence length follows `Transformer.__init__`: `max_seq_length` from the module config
(unless the processor kwargs set `model_max_length`), else the tokenizer's `model_max_length`
(tokenizer_config.json) capped at the model's `max_position_embeddings`, else `max_position_embeddings`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embtool.core.errors import CorruptFile, UnsafeModel, Unsupported

# sentence-transformers' mode names, in the order several modes are concatenated
ST_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# sentence-transformers' mode name -> embtool's pooling name
EMBTOOL_POOLING = {"cls": "cls", "max": "max", "mean": "mean", "mean_sqrt_len_tokens": "mean_sqrt_len",
                   "weightedmean": "weightedmean", "lasttoken": "last"}
MODULE_CONFIG_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                       "sentence_camembert_config.json", "sentence_albert_config.json",
                       "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")
# torch.nn activation classes a Dense layer may name -> embtool's activation name
ACTIVATIONS = {"tanh": "tanh", "identity": "identity", "relu": "relu", "gelu": "gelu", "sigmoid": "sigmoid",
               "silu": "silu"}
# module classes that change nothing at inference
NO_OPS = ("Dropout",)
VERY_LARGE = 10**12  # transformers' VERY_LARGE_INTEGER (1e30) means "no limit"


@dataclass(frozen=True)
class DenseLayer:
    """A Dense module: y = act(x W^T + b) (+ x, or x R^T, with use_residual)."""

    path: str
    weight: np.ndarray  # [out, in] float32
    bias: np.ndarray | None
    activation: str
    residual: np.ndarray | None = None  # [out, in]; None with use_residual and in == out: identity
    use_residual: bool = False


@dataclass
class SentenceTransformersInfo:
    found: bool = False  # the folder has a modules.json
    pooling_modes: tuple[str, ...] | None = None  # embtool names, in concatenation order
    include_prompt: bool = True
    head: list[tuple[str, Any]] = field(default_factory=list)  # after pooling, in order: ("dense", DenseLayer) | ("normalize", None)
    normalize: bool | None = None  # a Normalize module is in the pipeline (None: no modules.json)
    max_seq_length: int | None = None  # as sentence-transformers resolves it
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    card_prompts: dict[str, str] = field(default_factory=dict)  # documented by the model card only (core.card), when none are declared
    unsupported: list[str] = field(default_factory=list)  # module types embtool cannot run

    @property
    def pooling(self) -> str | None:
        """embtool's pooling name ("mean", "cls", "last", "max", "weightedmean", "mean_sqrt_len"; several joined by '+')."""
        return "+".join(self.pooling_modes) if self.pooling_modes else None

    @property
    def dense(self) -> list[DenseLayer]:
        return [x for kind, x in self.head if kind == "dense"]

    def prompt(self, name: str) -> str:
        if name not in self.prompts:
            have = ", ".join(sorted(self.prompts)) or "none"
            raise Unsupported(f"the model has no prompt named {name!r} (its prompts: {have})")
        return self.prompts[name]

    def query_prompt(self) -> str | None:
        """The prompt `encode_query` uses: "query"."""
        return self.prompts.get("query")

    def document_prompt(self) -> str | None:
        """The prompt `encode_document` uses: the first of "document", "passage", "corpus"."""
        return document_prompt_of(self.prompts)

    def prompt_texts(self) -> list[str]:
        """The distinct non-empty prompt texts, in the config's order."""
        out: list[str] = []
        for v in self.prompts.values():
            if v and v not in out:
                out.append(v)
        return out

    def expected_prompts(self) -> dict[str, str]:
        """The prompts the model's texts are read with: the declared ones, else those its card documents."""
        return self.prompts or self.card_prompts


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptFile(f"{path}: not valid UTF-8") from e
    except json.JSONDecodeError as e:
        raise CorruptFile(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except RecursionError as e:
        raise CorruptFile(f"{path}: JSON nested too deeply") from e
    except OSError as e:
        raise CorruptFile(f"{path}: cannot read: {e.strerror}") from e


def _obj(path: Path) -> dict[str, Any]:
    d = _read(path)
    if not isinstance(d, dict):
        raise CorruptFile(f"{path}: must be a JSON object")
    return d


def _subdir(root: Path, rel: Any, referrer: Path) -> Path:
    rel = str(rel or "")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise UnsafeModel(f"{referrer}: module path {rel!r} leaves the model folder; refusing to read it")
    d = root / rel
    try:
        d.resolve().relative_to(root.resolve())
    except ValueError:
        raise UnsafeModel(f"{referrer}: module path {rel!r} is a link out of the model folder; refusing to read it") from None
    return d


def pooling_modes(cfg: dict[str, Any], where: Path) -> tuple[tuple[str, ...], bool]:
    """(sentence-transformers mode names, include_prompt) from a Pooling config of any release."""
    mode = cfg.get("pooling_mode")
    if mode is None:
        active = tuple(m for k, m in LEGACY_POOLING_KEYS.items() if cfg.get(k, False))
        modes = active or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, list) else None
        if not modes or not all(isinstance(m, str) for m in modes):
            raise CorruptFile(f"{where}: pooling_mode must be a mode name or a list of them, not {mode!r}")
    for m in modes:
        if m not in ST_POOLING_MODES:
            raise Unsupported(f"{where}: pooling mode {m!r} is unknown (known: {', '.join(ST_POOLING_MODES)})")
    include = cfg.get("include_prompt", True)
    return modes, bool(include)


def _dense(root: Path, d: Path, where: Path) -> DenseLayer:
    from embtool.core.safetensors_io import SafetensorsFile

    cfg = _obj(d / "config.json") if (d / "config.json").is_file() else {}
    wfile = d / "model.safetensors"
    if not wfile.is_file():
        pickles = [p.name for p in (d / "pytorch_model.bin", d / "model.pt") if p.is_file()]
        if pickles:
            raise UnsafeModel(f"{d}: the Dense layer's weights are pickle-based ({', '.join(pickles)}); embtool never loads "
                              "them because unpickling can run arbitrary code. Convert them to model.safetensors first")
        raise CorruptFile(f"{d}: the Dense layer has no model.safetensors")
    st = SafetensorsFile(wfile)
    if "linear.weight" not in st.tensors:
        raise CorruptFile(f"{wfile}: no linear.weight tensor (found: {', '.join(sorted(st.tensors)) or 'none'})")
    W = np.asarray(st.get("linear.weight"), dtype=np.float32)
    if W.ndim != 2:
        raise CorruptFile(f"{wfile}: linear.weight must be a matrix, has shape {W.shape}")
    inf, outf = cfg.get("in_features"), cfg.get("out_features")
    if (isinstance(inf, int) and inf != W.shape[1]) or (isinstance(outf, int) and outf != W.shape[0]):
        raise CorruptFile(f"{d}: config says {inf} -> {outf} features but linear.weight has shape {W.shape}")
    b = np.asarray(st.get("linear.bias"), dtype=np.float32) if "linear.bias" in st.tensors else None
    if b is not None and b.shape != (W.shape[0],):
        raise CorruptFile(f"{wfile}: linear.bias has shape {b.shape}, expected ({W.shape[0]},)")
    act_path = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
    # sentence-transformers only imports torch.* activations without trust_remote_code; anything else
    # falls back to the default, Tanh
    act_name = act_path.rsplit(".", 1)[-1].lower() if act_path.startswith("torch.") else "tanh"
    if act_name not in ACTIVATIONS:
        raise Unsupported(f"{d}: Dense activation {act_path!r} is not supported ({', '.join(ACTIVATIONS)})")
    use_res = bool(cfg.get("use_residual", False))
    R = None
    if use_res and W.shape[0] != W.shape[1]:
        if "residual.weight" not in st.tensors:
            raise CorruptFile(f"{wfile}: use_residual with {W.shape[1]} -> {W.shape[0]} features needs residual.weight")
        R = np.asarray(st.get("residual.weight"), dtype=np.float32)
    return DenseLayer(str(d.relative_to(root)), np.ascontiguousarray(W), b, ACTIVATIONS[act_name], R, use_res)


def _module_config(d: Path) -> dict[str, Any]:
    for name in MODULE_CONFIG_FILES:
        p = d / name
        if p.is_file():
            cfg = _obj(p)
            if cfg:
                return cfg
    return {}


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def resolve_max_seq_length(module_cfg: dict[str, Any], tokenizer_cfg: dict[str, Any], config: dict[str, Any]) -> int | None:
    """max_seq_length as sentence-transformers' Transformer module computes it."""
    kwargs = module_cfg.get("processor_kwargs") or module_cfg.get("tokenizer_args") or {}
    if isinstance(kwargs, dict) and _int(kwargs.get("model_max_length")):
        return _int(kwargs.get("model_max_length"))
    if _int(module_cfg.get("max_seq_length")):
        return _int(module_cfg["max_seq_length"])
    tml = _int(tokenizer_cfg.get("model_max_length"))
    if tml is not None and tml >= VERY_LARGE:
        tml = None
    mpe = config.get("max_position_embeddings")
    mpe = mpe if isinstance(mpe, int) and not isinstance(mpe, bool) and mpe > 0 else None
    if tml is not None and mpe is not None:
        return min(tml, mpe)
    return tml if tml is not None else mpe


def document_prompt_of(prompts: dict[str, str]) -> str | None:
    """The document prompt among `prompts`, as `encode_document` picks it: "document", "passage", then "corpus"."""
    return next((prompts[n] for n in ("document", "passage", "corpus") if n in prompts), None)


def read_st_info(root: Path, config: dict[str, Any] | None = None) -> SentenceTransformersInfo:
    """Everything sentence-transformers reads from the folder besides the transformer's own weights."""
    root = Path(root)
    info = SentenceTransformersInfo()
    transformer_dir = root
    modules_p = root / "modules.json"
    if modules_p.is_file():
        modules = _read(modules_p)
        if not isinstance(modules, list):
            raise CorruptFile(f"{modules_p}: must be a JSON list of modules")
        info.found = True
        info.normalize = False
        for m in modules:
            if not isinstance(m, dict) or not isinstance(m.get("type"), str):
                raise CorruptFile(f"{modules_p}: every module needs a \"type\"")
            cls = m["type"].rsplit(".", 1)[-1]
            d = _subdir(root, m.get("path", ""), modules_p)
            if cls == "Transformer":
                transformer_dir = d
            elif cls == "Pooling":
                pc = _obj(d / "config.json") if (d / "config.json").is_file() else {}
                modes, info.include_prompt = pooling_modes(pc, d / "config.json")
                info.pooling_modes = tuple(EMBTOOL_POOLING[x] for x in modes)
            elif cls == "Dense":
                info.head.append(("dense", _dense(root, d, modules_p)))
            elif cls == "Normalize":
                info.head.append(("normalize", None))
                info.normalize = True
            elif cls not in NO_OPS:
                info.unsupported.append(m["type"])
    elif (root / "1_Pooling" / "config.json").is_file():  # a Pooling folder without modules.json
        modes, info.include_prompt = pooling_modes(_obj(root / "1_Pooling" / "config.json"), root / "1_Pooling" / "config.json")
        info.pooling_modes = tuple(EMBTOOL_POOLING[x] for x in modes)
    mcfg = _module_config(transformer_dir) if info.found or (root / "sentence_bert_config.json").is_file() else {}
    info.do_lower_case = bool(mcfg.get("do_lower_case", False))
    tcfg_p = root / "tokenizer_config.json"
    tcfg = _read(tcfg_p) if tcfg_p.is_file() else {}
    info.max_seq_length = resolve_max_seq_length(mcfg, tcfg if isinstance(tcfg, dict) else {}, config or {})
    cst = root / "config_sentence_transformers.json"
    if cst.is_file():
        d = _obj(cst)
        prompts = d.get("prompts") or {}
        if not isinstance(prompts, dict):
            raise CorruptFile(f"{cst}: prompts must be an object of name -> text")
        info.prompts = {str(k): str(v) for k, v in prompts.items() if v is not None}
        dp = d.get("default_prompt_name")
        if dp is not None:
            if not isinstance(dp, str) or dp not in info.prompts:
                raise CorruptFile(f"{cst}: default_prompt_name {dp!r} is not one of its prompts")
            info.default_prompt_name = dp
    if not info.prompts:
        from embtool.core.card import card_prompts, card_text

        info.card_prompts = card_prompts(card_text(root))
    return info


def prompt_length(tokenizer, prompt: str, special_ids: set[int]) -> int:
    """Tokens of the prompt at the start of a prompted text, as sentence-transformers counts them
    (`_get_prompt_length`): the prompt tokenized alone with special tokens, less a trailing special token."""
    ids = tokenizer.encode(prompt).ids
    n = len(ids)
    if ids and ids[-1] in special_ids:
        n -= 1
    return n


def resolve_prompt(info: SentenceTransformersInfo, prompt_name: str | None, prefix: str = "") -> tuple[str, str | None]:
    """(text put before every input, the prompt's name or None), as `SentenceTransformer.encode` picks it:
    an explicit prefix wins, then the named prompt, then the config's `default_prompt_name`."""
    if prefix:
        return prefix, None
    if prompt_name is not None:
        return info.prompt(prompt_name), prompt_name
    if info.default_prompt_name is not None:
        return info.prompts[info.default_prompt_name], info.default_prompt_name
    return "", None


def counting_prefixes(info: SentenceTransformersInfo, given: list[str] | None) -> list[str]:
    """The prefixes a corpus is read with when counting the tokens a model will see: the given ones, else
    the plain text and each of the model's prompts (prompt + text is what the model is fed): the declared ones, else
    those its model card documents (`SentenceTransformersInfo.card_prompts`)."""
    if given:
        return list(dict.fromkeys(given))
    return ["", *dict.fromkeys(v for v in info.expected_prompts().values() if v)]


def eval_prefix_for(info: SentenceTransformersInfo, prefixes: list[str]) -> str:
    """The prefix held-out texts are evaluated with: the model's document prompt (declared, else documented by its
    card) when it is among the counting prefixes, else the first non-empty one, else none."""
    doc = document_prompt_of(info.expected_prompts())
    if doc and doc in prefixes:
        return doc
    return next((p for p in prefixes if p), "")
