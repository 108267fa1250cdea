"""The architecture registry: every model family embtool builds from safetensors, described as data.

A `Family` says, for one family of checkpoints:

- which `config.json` keys it reads (`Key`: the spellings, hub remote-code names included, the JSON type, the valid
  range and the default);
- where it keeps its weights, relative to the model prefix (`bert.`, `model.` or none): the token table (whose
  stored forms — float, OFA factors, packed n-bit codes — are found from its base name, `token_table`), the position
  and token-type tables, and per layer the attention projections (separate q/k/v or a fused qkv), the norms and the
  MLP;
- how the layers are wired: norm kind and placement (LayerNorm or RMSNorm; after each block's residual add, or
  before each block with a final norm), position scheme (a learned table from 0 or from padding_idx + 1, MPNet's
  relative bias, or rotary with a theta per layer), attention kind (bidirectional, causal, or with a local window on
  some layers; grouped-query when the config says so), MLP kind (plain `out(act(in(x)))` or gated
  `out(act(gate) * up)`, separate or fused).

Who uses it: `core/model.py` finds the token table (and so every tensor on the vocabulary axis) through
`find_token_table`, and when a model is opened checks its config.json through `read_arch`: a value of the wrong type,
a size the weights contradict, or a value that cannot give finite embeddings (rope_theta <= 0, a window of no
token, a zero attention scalar or sliding pattern, eps <= 0, ...) is refused there, with one line naming the file and
the key. `runtime/graphs.py` builds the ONNX graph of the resolved `Arch` with the blocks of the family's `builder`
(`runtime/bert_graph.py` for absolute positions, `runtime/rotary_graph.py` for rotary ones). A family variant the
builders do not reproduce (rotary scaling, soft-capping, ...) is a valid config: `Arch.unsupported` says why, and
the runtime refuses it when asked to build (so `--force-unsupported` can still write it, unchecked).

Adding a family means adding a `Family` to FAMILIES (a `resolve` hook computes what depends on several keys: the
theta and window of each layer, the attention scaling) and a reference test (tests/test_arch.py, with a fixture from
tools/make_arch_fixtures.py).

| family | model_type | positions | attention | norm | MLP |
|---|---|---|---|---|---|
| bert | bert | learned, from 0; token types | bidirectional | LayerNorm after each residual add, and on the embeddings | plain |
| roberta | roberta, xlm-roberta, camembert | learned, from padding_idx + 1 | as BERT | as BERT | plain |
| distilbert | distilbert | learned, from 0, no token types | as BERT | as BERT | plain |
| mpnet | mpnet | learned from padding_idx + 1 (fixed 1), plus a relative bias shared by all layers | as BERT | as BERT | plain |
| modernbert | modernbert | rotary, a theta for global and one for local layers | global layers and local ones (\\|i - j\\| <= local_attention/2) | LayerNorm before each block (none before layer 0's attention), final norm | gated, fused, GeGLU |
| nomic_bert | nomic_bert | rotary | bidirectional, fused qkv | LayerNorm after each residual add, and on the embeddings | gated (SwiGLU) |
| gte | gte, new | rotary | bidirectional, fused qkv | as nomic_bert | gated, fused |
| qwen3 | qwen3 | rotary | causal, grouped-query, RMSNorm on each q/k head | RMSNorm before each block, final norm | gated (SwiGLU) |
| gemma3_text | gemma3_text | rotary, a theta for global and one for sliding layers | sliding and global layers, bidirectional (EmbeddingGemma) or causal; q/k norm; grouped-query | RMSNorm x (1 + w) before each block and on each block's output; final norm | gated (GeGLU, tanh) |

The core imports nothing of the runtime: this module reads config values and weight headers only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Protocol

from embtool.core.errors import CorruptFile

# ----------------------------------------------------------------------------------------------
# config.json keys
# ----------------------------------------------------------------------------------------------

INT, FLOAT, BOOL, STR, LIST, DICT = "an integer", "a finite number", "true or false", "a string", "a list", "an object"
REQUIRED = object()  # a Key without a default: the config must give it
SIZE_MAX = 1 << 24  # hidden sizes, heads, layers, ids: far above any model, far below what overflows a shape
WINDOW_MAX = (1 << 31) - 1  # attention windows and positions: an int32
THETA_RANGE = (1.0, 1e30)  # a rotary base: below 1 the frequencies grow with the index, and tiny ones overflow float32
EPS_RANGE = (1e-38, 1.0)  # a norm's epsilon: a normal float32 above 0 (0 divides a constant vector by 0)
SCALAR_RANGE = (1.0, 1e9)  # Gemma's query_pre_attn_scalar: scores are scaled by its -1/2 power


@dataclass(frozen=True)
class Key:
    """One config.json value a family reads: `field` (its name among the resolved values), `names` its spellings (the
    first present and not null wins; null means not given, as transformers' configs write it), its JSON `kind`, the
    range [low, high] a number must lie in, and its `default` (REQUIRED: refused when missing)."""

    field: str
    names: tuple[str, ...]
    kind: str
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def check_value(v: Any, kind: str, low: float | None, high: float | None, where: str, name: str) -> Any:
    """`v` (the config's value of `name`) if it is of `kind` and within [low, high]; else CorruptFile naming `where`
    (the config file) and the key. An integer is never a bool nor a float; a number is a finite int or float, and
    comes back as a float."""
    ok = {INT: isinstance(v, int) and not isinstance(v, bool),
          FLOAT: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          BOOL: isinstance(v, bool), STR: isinstance(v, str), LIST: isinstance(v, list), DICT: isinstance(v, dict)}[kind]
    if not ok:
        raise CorruptFile(f"{where}: {name} = {_show(v)} is not {kind}")
    if low is not None and high is not None and not low <= v <= high:
        raise CorruptFile(f"{where}: {name} = {_show(v)} is out of range (it must be between {_num(low)} and {_num(high)})")
    return float(v) if kind == FLOAT else v  # JSON's 1 for 1.0: a float attribute of the graph either way


class Reader:
    """Reads one config.json for a family: every key checked (`get`), the spelling each field came from remembered
    (for messages), and the first reason the builders cannot reproduce the config (`refuse`)."""

    def __init__(self, cfg: Mapping[str, Any], where: str) -> None:
        self.cfg, self.where = cfg, where
        self.spelled: dict[str, str] = {}  # field -> its key in the config, or "KEY (not given)" for a default
        self.unsupported: str | None = None

    def get(self, key: Key) -> Any:
        for n in key.names:
            if self.cfg.get(n) is not None:
                self.spelled[key.field] = n
                return check_value(self.cfg[n], key.kind, key.low, key.high, self.where, n)
        if key.default is REQUIRED:
            raise CorruptFile(f"{self.where}: {key.names[0]} is missing")
        self.spelled.setdefault(key.field, f"{key.names[0]} (not given)")
        return key.default

    def value(self, v: Any, kind: str, name: str, low: float | None = None, high: float | None = None) -> Any:
        """A nested value (`name`: its dotted path) checked like a key."""
        return check_value(v, kind, low, high, self.where, name)

    def refuse(self, why: str) -> None:
        """Record a variant the builders do not reproduce (the first one is reported)."""
        if self.unsupported is None:
            self.unsupported = f"{self.where}: {why}"

    def corrupt(self, why: str) -> CorruptFile:
        return CorruptFile(f"{self.where}: {why}")


def _sizes(hidden=("hidden_size",), layers=("num_hidden_layers",), heads=("num_attention_heads",),
           defaults: tuple = (REQUIRED, REQUIRED, REQUIRED)) -> tuple[Key, ...]:
    return (Key("hidden", hidden, INT, defaults[0], 1, SIZE_MAX), Key("layers", layers, INT, defaults[1], 1, SIZE_MAX),
            Key("heads", heads, INT, defaults[2], 1, SIZE_MAX))


K_PAD = Key("pad", ("pad_token_id",), INT, None)  # the id the encoder pads with (and RoBERTa's position offset)
K_POSITIONS = Key("max_positions", ("max_position_embeddings",), INT, None, 1, WINDOW_MAX)  # caps --max-length


# ----------------------------------------------------------------------------------------------
# families
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """One family of checkpoints (see the module docstring). Weight names are relative to the model prefix; a Linear
    `X` is stored as `X.weight` (+ `X.bias`), or packed as `X.qweight`/`X.scales`/`X.qzeros`."""

    name: str
    model_types: tuple[str, ...]
    builder: str  # "bert": learned positions, onnxruntime's MultiHeadAttention; "rotary": rotary attention by hand
    keys: tuple[Key, ...]  # every config.json key the family reads
    resolve: Callable[[Reader, dict[str, Any], "Family"], dict[str, Any]]  # per-layer thetas/windows, eps, act, ...
    token_table: str  # base name of the token-embedding table
    layers: str  # the prefix of layer i, with {i}
    o: str  # attention output projection
    attn_norm: str  # the norm of the attention block (before it: pre-norm; after its residual add: post-norm)
    mlp_norm: str
    mlp_out: str
    q: str = ""  # separate q / k / v projections, or a fused [q; k; v] one
    k: str = ""
    v: str = ""
    qkv: str | None = None
    qk_norm: tuple[str, str] | None = None  # RMSNorm of each query / key head
    positions: str = "rotary"  # "absolute" (a learned table from 0), "absolute-padded" (from padding_idx + 1), "rotary"
    position_table: str | None = None
    token_type: str | None = None  # token-type table (its row 0 is added to every token)
    relative_bias: str | None = None  # relative position bias table [buckets, heads] shared by every layer (MPNet)
    norm: str = "layernorm"  # "layernorm" or "rms"
    rms_offset: float = 0.0  # Gemma's RMSNorm scales by (offset + weight)
    pre_norm: bool = False
    emb_norm: str | None = None
    final_norm: str | None = None
    post_attn_norm: str | None = None  # Gemma's sandwich norms, on a block's output before the residual add
    post_mlp_norm: str | None = None
    mlp_in: str = ""  # plain MLP: out(act(in(x)))
    mlp_fused: str | None = None  # gated MLP, fused input [first; second]
    mlp_gate: str = ""  # gated MLP, separate gate and up projections
    mlp_up: str = ""
    act_on_first: bool = True  # fused gated MLP: act(first half) * second half, else first * act(second)
    embed_scale: bool = False  # token embeddings times sqrt(hidden) (Gemma)
    causal: bool = False
    free_head_dim: bool = False  # heads x head_dim may differ from the hidden size (q/o are [heads*head_dim, hidden])

    @property
    def rms(self) -> bool:
        return self.norm == "rms"

    def config_keys(self) -> list[str]:
        """Every config.json key (each spelling) the family reads."""
        return [n for k in self.keys for n in k.names]


@dataclass(frozen=True)
class Arch:
    """A family resolved against one config.json and its weights: what the graph builders read."""

    family: Family
    model_type: str
    prefix: str  # the weights' prefix before the family's names ("", "bert.", "model.", ...)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    act: str
    thetas: tuple[float, ...]  # rotary theta per layer (empty for learned positions)
    windows: tuple[int | None, ...]  # per layer: None = global attention, w = keys with |i - j| <= w
    causal: bool
    scaling: float  # attention scores times this
    pad_id: int  # the padding id after which "absolute-padded" positions start
    unsupported: str | None = None  # why the builders cannot reproduce this config (None: they can)
    spelled: Mapping[str, str] = field(default_factory=dict)  # field -> the config key it was read from


ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")  # what both builders emit
ROTARY_ACTIVATIONS = ACTIVATIONS + ("silu", "swish")


def _act(r: Reader, act: str, known: tuple[str, ...]) -> str:
    if act.lower() not in known:
        r.refuse(f"activation {act!r} is not supported ({', '.join(known)})")
    return act


# -- the BERT family ---------------------------------------------------------------------------

BERT_KEYS = (*_sizes(), Key("eps", ("layer_norm_eps",), FLOAT, 1e-12, *EPS_RANGE), Key("act", ("hidden_act",), STR, "gelu"),
             K_PAD, K_POSITIONS, Key("position_type", ("position_embedding_type",), STR, "absolute"))
DISTILBERT_KEYS = (*_sizes(("dim",), ("n_layers",), ("n_heads",), (768, 6, 12)), Key("act", ("activation",), STR, "gelu"),
                   K_PAD, K_POSITIONS)


def _resolve_bert(r: Reader, v: dict[str, Any], f: Family) -> dict[str, Any]:
    hidden, heads = v["hidden"], v["heads"]
    if hidden % heads:
        raise r.corrupt(f"{r.spelled['heads']} = {heads} does not divide {r.spelled['hidden']} = {hidden}")
    if v.get("position_type", "absolute") != "absolute":
        r.refuse(f"position_embedding_type {v['position_type']!r} is not supported (absolute positions only)")
    # positions of "absolute-padded" families start after the padding id: RoBERTa's pad_token_id (1 when absent, 0
    # when null, as transformers' `config.pad_token_id or 0`), MPNet's fixed 1
    pad = 1 if f.name == "mpnet" else (v["pad"] if v["pad"] is not None else 0 if "pad_token_id" in r.cfg else 1)
    return dict(kv_heads=heads, head_dim=hidden // heads, eps=v.get("eps", 1e-12), act=_act(r, v["act"], ACTIVATIONS),
                thetas=(), windows=(None,) * v["layers"], causal=False, scaling=1.0 / math.sqrt(hidden // heads), pad_id=pad)


def _bert_like(name: str, model_types: tuple[str, ...], **changes) -> Family:
    base = dict(builder="bert", keys=BERT_KEYS, resolve=_resolve_bert, token_table="embeddings.word_embeddings",
                layers="encoder.layer.{i}.", q="attention.self.query", k="attention.self.key", v="attention.self.value",
                o="attention.output.dense", attn_norm="attention.output.LayerNorm", mlp_in="intermediate.dense",
                mlp_out="output.dense", mlp_norm="output.LayerNorm", emb_norm="embeddings.LayerNorm", positions="absolute",
                position_table="embeddings.position_embeddings.weight", token_type="embeddings.token_type_embeddings.weight")
    return Family(name, model_types, **{**base, **changes})


BERT = _bert_like("bert", ("bert",))
ROBERTA = _bert_like("roberta", ("roberta", "xlm-roberta", "camembert"), positions="absolute-padded")
DISTILBERT = _bert_like("distilbert", ("distilbert",), keys=DISTILBERT_KEYS, layers="transformer.layer.{i}.",
                        q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", o="attention.out_lin",
                        attn_norm="sa_layer_norm", mlp_in="ffn.lin1", mlp_out="ffn.lin2", mlp_norm="output_layer_norm",
                        token_type=None)
MPNET = _bert_like("mpnet", ("mpnet",), q="attention.attn.q", k="attention.attn.k", v="attention.attn.v", o="attention.attn.o",
                   attn_norm="attention.LayerNorm", positions="absolute-padded", token_type=None,
                   relative_bias="encoder.relative_attention_bias.weight")

# -- the rotary families -----------------------------------------------------------------------

ROTARY_KEYS = (*_sizes(("hidden_size", "n_embd"), ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head")),
               Key("kv_heads", ("num_key_value_heads",), INT, None, 1, SIZE_MAX), Key("head_dim", ("head_dim",), INT, None, 2, SIZE_MAX),
               Key("rope_parameters", ("rope_parameters",), DICT, None), Key("rope_scaling", ("rope_scaling",), DICT, None),
               K_PAD, K_POSITIONS)
K_LAYER_TYPES = Key("layer_types", ("layer_types",), LIST, None)
K_THETA = Key("theta", ("rope_theta", "rotary_emb_base"), FLOAT, 10000.0, *THETA_RANGE)
K_EPS_LN = Key("eps", ("layer_norm_eps", "layer_norm_epsilon"), FLOAT, 1e-12, *EPS_RANGE)
K_EPS_RMS = Key("eps", ("rms_norm_eps",), FLOAT, 1e-6, *EPS_RANGE)
K_ACT = Key("act", ("hidden_act", "activation_function"), STR, "silu")
LAYER_TYPES = ("full_attention", "sliding_attention")


def _theta(r: Reader, v: dict[str, Any], layer_type: str | None, default: float) -> float:
    """A rotary theta: rope_parameters' (the entry of `layer_type` when it has one: transformers 5), else `default`
    (the family's own key). A rope type other than plain rotary, or any rope_scaling, is a variant the builders do
    not reproduce."""
    rp, where = v["rope_parameters"] or {}, "rope_parameters"
    if layer_type and rp.get(layer_type) is not None:
        rp, where = r.value(rp[layer_type], DICT, f"rope_parameters.{layer_type}"), f"rope_parameters.{layer_type}"
    rope_type = next((r.value(rp[k], STR, f"{where}.{k}") for k in ("rope_type", "type") if rp.get(k) is not None), "default")
    if v["rope_scaling"] or rope_type != "default":
        r.refuse(f"rotary scaling {v['rope_scaling'] or rope_type!r} is not supported (plain rotary only)")
    if rp.get("rope_theta") is not None:
        return float(r.value(rp["rope_theta"], FLOAT, f"{where}.rope_theta", *THETA_RANGE))
    return float(default)


def _layer_types(r: Reader, v: dict[str, Any], derived: Callable[[int], str]) -> list[str]:
    """layer_types as given (full or sliding attention, one per layer), else `derived(i)` for each layer."""
    types = v["layer_types"]
    if types is None:
        return [derived(i) for i in range(v["layers"])]
    if len(types) != v["layers"] or not all(isinstance(t, str) and t in LAYER_TYPES for t in types):
        raise r.corrupt(f"layer_types = {_show(types)} does not list full/sliding attention for {v['layers']} layers")
    return types


def _rotary_sizes(r: Reader, v: dict[str, Any], f: Family) -> dict[str, Any]:
    """kv_heads and head_dim (their defaults: all heads, hidden / heads), checked against the other sizes."""
    hidden, heads = v["hidden"], v["heads"]
    kv = v["kv_heads"] if v["kv_heads"] is not None else heads
    hd = v["head_dim"] if v["head_dim"] is not None else hidden // heads
    if not f.free_head_dim and hd * heads != hidden:
        raise r.corrupt(f"{r.spelled['hidden']} = {hidden} is not {r.spelled['heads']} = {heads} x {r.spelled['head_dim']} = {hd}")
    if heads % kv or hd % 2 or hd == 0:
        raise r.corrupt(f"{r.spelled['heads']} = {heads} attention heads cannot share {r.spelled['kv_heads']} = {kv} "
                        f"key/value heads of size {r.spelled['head_dim']} = {hd} (they must divide the heads; the size must be "
                        "even)")
    return dict(kv_heads=kv, head_dim=hd, scaling=1.0 / math.sqrt(hd), pad_id=0)


def _resolve_plain_rotary(r: Reader, v: dict[str, Any], f: Family) -> dict[str, Any]:
    """NomicBERT, GTE and Qwen3: one theta, global attention in every layer."""
    out = _rotary_sizes(r, v, f)
    if f.name == "nomic_bert" and (v["fraction"] != 1.0 or v["interleaved"]):
        r.refuse("partial or interleaved rotary embeddings are not supported")
    if f.name == "nomic_bert" and (v["prenorm"] or v["causal"]):
        r.refuse("NomicBERT with prenorm or causal attention is not supported")
    if f.name == "gte" and (v["logn"] or v["norm_type"] != "layer_norm" or v["position_type"] != "rope"):
        r.refuse(f"GTE with logn attention scaling, {v['norm_type']} or {v['position_type']} positions is not supported")
    if f.name == "qwen3" and (v["sliding"] or any(t != "full_attention" for t in _layer_types(r, v, lambda i: "full_attention"))):
        r.refuse("Qwen3 sliding-window layers are not supported")
    act = {"swiglu": "silu", "geglu": "gelu"}.get(v["act"], v["act"])
    return dict(out, eps=v["eps"], act=_act(r, act, ROTARY_ACTIVATIONS), thetas=(_theta(r, v, None, v["theta"]),) * v["layers"],
                windows=(None,) * v["layers"], causal=f.causal)


def _resolve_modernbert(r: Reader, v: dict[str, Any], f: Family) -> dict[str, Any]:
    """Global layers every `global_attn_every_n_layers` (from layer 0), local ones between (|i - j| <= window / 2)."""
    types = _layer_types(r, v, lambda i: "sliding_attention" if i % v["every"] else "full_attention")
    windows = tuple(v["window"] // 2 if t == "sliding_attention" else None for t in types)
    g, loc = _theta(r, v, "full_attention", v["theta"]), _theta(r, v, "sliding_attention", v["local_theta"])
    return dict(_rotary_sizes(r, v, f), eps=v["eps"], act=_act(r, v["act"], ROTARY_ACTIVATIONS), windows=windows,
                thetas=tuple(g if w is None else loc for w in windows), causal=False)


def _resolve_gemma3(r: Reader, v: dict[str, Any], f: Family) -> dict[str, Any]:
    """Gemma 3 text: sliding layers except every `sliding_window_pattern`-th; EmbeddingGemma's is bidirectional."""
    if v["softcap"] is not None:
        r.refuse("attention logit soft-capping is not supported")
    causal = not v["bidirectional"]
    types = _layer_types(r, v, lambda i: "sliding_attention" if (i + 1) % v["pattern"] else "full_attention")
    # transformers: causal layers see keys i - sw < j <= i; bidirectional ones |i - j| < sw // 2 + 1 (config.json
    # stores the bidirectional window doubled)
    w = v["window"] // 2 if not causal else v["window"] - 1
    windows = tuple(w if t == "sliding_attention" else None for t in types)
    g, loc = _theta(r, v, "full_attention", v["theta"]), _theta(r, v, "sliding_attention", v["local_theta"])
    return dict(_rotary_sizes(r, v, f), eps=v["eps"], act=_act(r, v["act"], ROTARY_ACTIVATIONS), windows=windows,
                thetas=tuple(g if w is None else loc for w in windows), causal=causal, scaling=float(v["scalar"]) ** -0.5)


def _rotary(name: str, model_types: tuple[str, ...], resolve, keys: tuple[Key, ...], **kw) -> Family:
    return Family(name, model_types, "rotary", ROTARY_KEYS + keys, resolve, **kw)


MODERNBERT = _rotary("modernbert", ("modernbert",), _resolve_modernbert, (
    K_LAYER_TYPES, Key("every", ("global_attn_every_n_layers",), INT, 3, 1, SIZE_MAX),
    Key("window", ("local_attention",), INT, 128, 2, WINDOW_MAX),
    Key("theta", ("global_rope_theta",), FLOAT, 160000.0, *THETA_RANGE),
    Key("local_theta", ("local_rope_theta",), FLOAT, 10000.0, *THETA_RANGE),
    Key("eps", ("norm_eps",), FLOAT, 1e-5, *EPS_RANGE), Key("act", ("hidden_activation",), STR, "gelu")),
    token_table="embeddings.tok_embeddings", layers="layers.{i}.", attn_norm="attn_norm", mlp_norm="mlp_norm", o="attn.Wo",
    mlp_out="mlp.Wo", qkv="attn.Wqkv", mlp_fused="mlp.Wi", act_on_first=True, emb_norm="embeddings.norm",
    final_norm="final_norm", pre_norm=True)
NOMIC = _rotary("nomic_bert", ("nomic_bert",), _resolve_plain_rotary, (  # the hub's own keys (n_embd, rotary_emb_base, ...) too
    K_THETA, K_EPS_LN, K_ACT, Key("fraction", ("rotary_emb_fraction",), FLOAT, 1.0, 1e-9, 1.0),
    Key("interleaved", ("rotary_emb_interleaved",), BOOL, False), Key("prenorm", ("prenorm",), BOOL, False),
    Key("causal", ("causal",), BOOL, False)),
    token_table="embeddings.word_embeddings", layers="encoder.layers.{i}.", attn_norm="norm1", mlp_norm="norm2",
    o="attn.out_proj", mlp_out="mlp.fc2", qkv="attn.Wqkv", mlp_gate="mlp.fc12", mlp_up="mlp.fc11", emb_norm="emb_ln",
    token_type="embeddings.token_type_embeddings.weight")
GTE = _rotary("gte", ("gte", "new"), _resolve_plain_rotary, (  # "new": Alibaba's remote-code config of the same weights
    K_THETA, K_EPS_LN, K_ACT, Key("logn", ("logn_attention_scale",), BOOL, False),
    Key("norm_type", ("layer_norm_type",), STR, "layer_norm"), Key("position_type", ("position_embedding_type",), STR, "rope")),
    token_table="embeddings.word_embeddings", layers="encoder.layer.{i}.", attn_norm="attn_ln", mlp_norm="mlp_ln",
    o="attention.o_proj", mlp_out="mlp.down_proj", qkv="attention.qkv_proj", mlp_fused="mlp.up_gate_proj",
    act_on_first=False, emb_norm="embeddings.LayerNorm", token_type="embeddings.token_type_embeddings.weight")
QWEN3 = _rotary("qwen3", ("qwen3",), _resolve_plain_rotary, (
    K_THETA, K_EPS_RMS, K_ACT, K_LAYER_TYPES, Key("sliding", ("use_sliding_window",), BOOL, False)),
    token_table="embed_tokens", layers="layers.{i}.", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
    o="self_attn.o_proj", mlp_out="mlp.down_proj", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    qk_norm=("self_attn.q_norm", "self_attn.k_norm"), mlp_gate="mlp.gate_proj", mlp_up="mlp.up_proj", final_norm="norm",
    norm="rms", pre_norm=True, causal=True, free_head_dim=True)
GEMMA3 = replace(QWEN3, name="gemma3_text", model_types=("gemma3_text",), resolve=_resolve_gemma3, keys=ROTARY_KEYS + (
    K_LAYER_TYPES, K_EPS_RMS, Key("act", ("hidden_activation", "hidden_act"), STR, "gelu_pytorch_tanh"),
    Key("softcap", ("attn_logit_softcapping",), FLOAT, None), Key("bidirectional", ("use_bidirectional_attention",), BOOL, False),
    Key("pattern", ("sliding_window_pattern",), INT, 6, 1, SIZE_MAX), Key("window", ("sliding_window",), INT, 4096, 2, WINDOW_MAX),
    Key("theta", ("rope_theta",), FLOAT, 1000000.0, *THETA_RANGE),
    Key("local_theta", ("rope_local_base_freq",), FLOAT, 10000.0, *THETA_RANGE),
    Key("scalar", ("query_pre_attn_scalar",), FLOAT, 256, *SCALAR_RANGE)),
    mlp_norm="pre_feedforward_layernorm", rms_offset=1.0, post_attn_norm="post_attention_layernorm",
    post_mlp_norm="post_feedforward_layernorm", embed_scale=True)

FAMILIES: tuple[Family, ...] = (BERT, ROBERTA, DISTILBERT, MPNET, MODERNBERT, NOMIC, GTE, QWEN3, GEMMA3)
BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}
SUPPORTED: tuple[str, ...] = tuple(BY_MODEL_TYPE)  # the config.json model_types embtool builds from safetensors


def model_type(config: Mapping[str, Any]) -> str:
    mt = config.get("model_type")
    return mt.lower() if isinstance(mt, str) else ""


def family_of(config: Mapping[str, Any]) -> Family | None:
    """The family of a config.json (None: not one embtool builds)."""
    return BY_MODEL_TYPE.get(model_type(config))


def position_offset(config: Mapping[str, Any]) -> int:
    """Positions a model's learned table loses to its padding id: padding_idx + 1 for "absolute-padded" families
    (RoBERTa, XLM-R, CamemBERT: pad_token_id, 0 when null, 1 when absent; MPNet: 1), else 0."""
    f = family_of(config)
    if f is None or f.positions != "absolute-padded":
        return 0
    pad = config.get("pad_token_id", 1)
    return 2 if f.name == "mpnet" else (pad if isinstance(pad, int) and not isinstance(pad, bool) else 0) + 1


def pad_sets_positions(config: Mapping[str, Any]) -> bool:
    """Whether config.json's pad_token_id decides where positions start (RoBERTa's padding_idx), so that changing it
    changes what the model computes."""
    f = family_of(config)
    return f is not None and f.positions == "absolute-padded" and f.name != "mpnet"


# ----------------------------------------------------------------------------------------------
# the token table and its stored forms
# ----------------------------------------------------------------------------------------------

FACTOR_F, FACTOR_P = "factor_F", "factor_P"  # OFA factors of a table BASE: BASE.factor_F [V, k], BASE.factor_P [k, D]
# the tensor that holds a table's rows, by form: float, OFA factor F, packed codes (core/qrecord.py), packed factor F
TABLE_FORMS = (("weight", "input embedding"), (FACTOR_F, "input embedding (factor F)"),
               ("qweight", "input embedding (quantized codes)"), (FACTOR_F + ".qweight", "input embedding (quantized codes)"))
# token tables of checkpoints outside FAMILIES (found by name when the model_type is unknown)
OTHER_TABLES = ("word_embeddings", "embed_tokens", "tok_embeddings", "wte", "shared")


class WeightHeaders(Protocol):
    """What this module reads of a weight store (core/model.py's WeightStore): tensor names and headers (`.shape`)."""

    def keys(self) -> Collection[str]: ...
    def info(self, name: str) -> Any: ...
    def __contains__(self, name: str) -> bool: ...


@dataclass(frozen=True)
class TokenTable:
    """Where a model keeps its token-embedding table: `base` (its full name without a suffix, e.g.
    `model.embed_tokens`), and `rows`, the stored tensor whose first axis is the vocabulary (`base.weight`,
    `base.factor_F`, `base.qweight` or `base.factor_F.qweight`), with its `role`."""

    base: str
    rows: str
    role: str

    @property
    def factorized(self) -> bool:
        return self.rows.startswith(self.base + "." + FACTOR_F)

    @property
    def quantized(self) -> bool:
        return self.rows.endswith(".qweight")

    def parts(self) -> str:
        """The name prefix of the tensors stored for the rows: `base.` (a float or packed table: its .weight, or
        .qweight/.scales/.qzeros), or `base.factor_F.` (a packed factor F)."""
        return self.rows.rsplit(".", 1)[0] + "."


def find_token_table(config: Mapping[str, Any], weights: WeightHeaders) -> TokenTable | None:
    """The token table of a safetensors model: the family's `token_table` in any stored form when config.json names
    a family, else the first of every known table name (OTHER_TABLES) that the weights hold (a float table: a
    matrix). Forms are tried in TABLE_FORMS order."""
    f = family_of(config)
    bases = [f.token_table] if f is not None else list(dict.fromkeys([g.token_table for g in FAMILIES] + list(OTHER_TABLES)))
    names = list(weights.keys())
    for suffix, role in TABLE_FORMS:
        for base in bases:
            want = base + "." + suffix
            for k in names:
                if (k == want or k.endswith("." + want)) and (suffix != "weight" or len(weights.info(k).shape) == 2):
                    return TokenTable(k[: -len("." + suffix)], k, role)
    return None


# ----------------------------------------------------------------------------------------------
# reading a config against its weights
# ----------------------------------------------------------------------------------------------

def read_arch(config: Mapping[str, Any], weights: WeightHeaders, where: str | Path,
              logical_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Arch | None:
    """The resolved architecture of a safetensors model whose config.json names a family (None otherwise), every key
    the family reads checked for its type and range and the sizes checked against the weights' shapes (a packed
    Linear `X` by `logical_shapes[X]`, from its quantization record). Raises CorruptFile naming `where` (config.json)
    and the key; a config the builders do not reproduce comes back with `Arch.unsupported` set."""
    f = family_of(config)
    if f is None:
        return None
    where = str(where)
    r = Reader(config, where)
    values = {k.field: r.get(k) for k in f.keys}
    table = find_token_table(config, weights)
    if table is None:
        raise CorruptFile(f"{where}: model_type {model_type(config)!r} keeps its token table in {f.token_table}, which the "
                          "weights do not have")
    prefix = table.base[: -len(f.token_table)]
    values.update(f.resolve(r, values, f))
    arch = Arch(family=f, model_type=model_type(config), prefix=prefix, unsupported=r.unsupported, spelled=dict(r.spelled),
                **{k: values[k] for k in ("hidden", "layers", "heads", "kv_heads", "head_dim", "eps", "act", "thetas",
                                          "windows", "causal", "scaling", "pad_id")})
    _check_shapes(arch, config, weights, logical_shapes or {}, where, table)
    return arch


def table_width(table: TokenTable, weights: WeightHeaders, logical: Mapping[str, tuple[int, ...]]) -> int | None:
    """The width of the token embeddings: the float table's columns, the factor P's, or the packed table's recorded K."""
    P = f"{table.base}.{FACTOR_P}"
    if table.factorized:
        return weights.info(P).shape[-1] if P in weights else None
    if table.quantized:
        return logical[table.base][1] if table.base in logical else None
    return weights.info(table.rows).shape[1]


def _check_shapes(a: Arch, config: Mapping[str, Any], weights: WeightHeaders, logical: Mapping[str, tuple[int, ...]],
                  where: str, table: TokenTable) -> None:
    """Refuse sizes the weights contradict, whichever spelling gave them: the number of layers, the token table's
    width, the attention projections against heads x head_dim, the norms against the hidden size, MPNet's bias
    table against the heads, the learned position table against max_position_embeddings and the padding offset,
    and a max_position_embeddings that leaves no room for a text. Missing tensors are the builders' to report."""
    f, p, sp = a.family, a.prefix, a.spelled
    layer_re = re.compile(re.escape(p + f.layers).replace(re.escape("{i}"), r"(\d+)"))
    found = {int(m.group(1)) for k in weights.keys() for m in [layer_re.match(k)] if m}
    if found and max(found) + 1 != a.layers:
        raise CorruptFile(f"{where} contradicts the weights: {sp['layers']} = {a.layers:,} but the weights "
                          f"have {max(found) + 1} layers")
    width = table_width(table, weights, logical)
    if width is not None and width != a.hidden:
        raise CorruptFile(f"{where} contradicts the weights: {sp['hidden']} = {a.hidden:,} but the token "
                          f"embeddings have {width} columns")
    mpe, offset = config.get("max_position_embeddings"), position_offset(config)
    if isinstance(mpe, int) and mpe - offset < 2:
        raise CorruptFile(f"{where}: max_position_embeddings = {mpe} leaves no room for a text of two tokens"
                          + (f" after the {offset} positions that pad_token_id = {a.pad_id} takes" if offset else ""))

    def shape(base: str) -> tuple[int, ...] | None:
        if base + ".weight" in weights:
            return tuple(weights.info(base + ".weight").shape)
        return tuple(logical[base]) if base in logical else None

    def expect(base: str, want: tuple[int, ...], keys: tuple[str, ...]) -> None:
        got = shape(base)
        if got is not None and got != want:
            said = ", ".join(f"{sp[k]} = {getattr(a, k)}" for k in keys)
            raise CorruptFile(f"{where} contradicts the weights: {said} make {base} {list(want)}, but the weights hold "
                              f"{list(got)}")

    H, q_rows, kv_rows = a.hidden, a.heads * a.head_dim, a.kv_heads * a.head_dim
    att = ("hidden", "heads", "kv_heads", "head_dim") if f.builder == "rotary" else ("hidden", "heads")
    for i in range(a.layers):
        L = p + f.layers.format(i=i)
        if f.qkv:
            expect(L + f.qkv, (q_rows + 2 * kv_rows, H), att)
        else:
            expect(L + f.q, (q_rows, H), att)
            expect(L + f.k, (kv_rows, H), att)
            expect(L + f.v, (kv_rows, H), att)
        expect(L + f.o, (H, q_rows), att)
        for n in (f.qk_norm or ()):
            expect(L + n, (a.head_dim,), att)
        for n in (f.attn_norm, f.mlp_norm, f.post_attn_norm, f.post_mlp_norm):
            if n:
                expect(L + n, (H,), ("hidden",))
    for n in (f.emb_norm, f.final_norm):
        if n:
            expect(p + n, (H,), ("hidden",))
    if f.relative_bias and p + f.relative_bias in weights:
        got = tuple(weights.info(p + f.relative_bias).shape)
        if len(got) != 2 or got[1] != a.heads:
            raise CorruptFile(f"{where} contradicts the weights: {sp['heads']} = {a.heads} but {p + f.relative_bias} is {list(got)}")
    if f.position_table and p + f.position_table in weights:
        rows = weights.info(p + f.position_table).shape[0]
        mpe = config.get("max_position_embeddings")
        if isinstance(mpe, int) and mpe > rows:
            raise CorruptFile(f"{where} contradicts the weights: max_position_embeddings = {mpe:,} but "
                              f"{p + f.position_table} has {rows:,} rows")
        if f.positions == "absolute-padded" and a.pad_id + 2 > rows:
            raise CorruptFile(f"{where} contradicts the weights: pad_token_id = {a.pad_id:,} sets positions past the "
                              f"{rows:,} rows of {p + f.position_table}")
