"""Model cards: the `README.md` every model-writing command puts in its output, in the Hugging Face Hub's format.

A card is YAML front matter between `---` lines, then Markdown. embtool writes, from the output's record
(core/formats/record.py) and the command's summary:

    base_model      the Hub id of the model the chain of steps started from (omitted for a local folder: the Hub
                    accepts only ids that name a model there, as sentence-transformers' own cards do; the body names
                    the folder)
    base_model_relation  "quantized" for a quantized model
    library_name    sentence-transformers when sentence-transformers can load the output (safetensors weights of a
                    sentence-transformers model, neither quantized nor factorized), else embtool
    pipeline_tag    sentence-similarity
    license         (and license_name, license_link) carried over from the base model's own card
    language        for a model whose vocabulary this command changed (trim-vocab, init-subwords, shrink's trim): the
                    languages the built-in fidelity check found the new vocabulary covers, omitted when not known
                    (--eval FILE, --no-eval); otherwise the input card's language, carried over
    tags            embtool, and what was done: trimmed, quantized-<b>bit (and mixed-precision), factorized,
                    new-vocabulary, onnx; sentence-transformers when it can load the model

then the body: what the model is and what it came from, every step with its options (the record's chain), the
measured fidelity of this command (held-out cosine mean and min, recall@10, weight bytes before and after, from its
summary), and how to load it (sentence-transformers when it can, embtool's `Encoder` and `embtool embed` always).

The card is regenerated from the record on every write, never appended to; the input's README.md is never copied as
it is (it describes the base model): only its license and language are carried over, read by `read_front_matter`, a
small strict reader of the YAML subset cards use at their top level (no YAML library): `key: scalar`, quoted scalars,
`[a, b]` and block lists of scalars. Values outside that subset (nested mappings such as `model-index`, block scalars,
anchors, aliases, tags) are skipped, never guessed; text that is not front matter at all (no closing `---`, tab
indentation, a duplicate key, an unterminated quote) raises FrontMatterError, and the card then carries no license
(with a warning). `dump_front_matter` quotes every string that a YAML reader could take for anything else.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embtool.core.errors import CorruptFile

CARD = "README.md"
MAX_BASE_CARD = 1 << 20  # bytes of the input's README.md read; its front matter must close within them
CARRIED = ("license", "license_name", "license_link")  # front matter keys the output keeps from the base card


class FrontMatterError(CorruptFile):
    """A model card's front matter that is not the YAML a card holds."""


class Unread:
    """A value outside the subset `read_front_matter` reads (a nested mapping, a block scalar, an alias, ...)."""

    def __repr__(self) -> str:
        return "UNREAD"


UNREAD = Unread()


# ---------------------------------------------------------------------------------------------- reading front matter
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.\-]*)[ ]*:(?:[ ]+(.*))?")
_ITEM = re.compile(r"([ ]*)-(?:[ ]+(.*))?")
_INT = re.compile(r"[-+]?[0-9]{1,18}")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r",
            "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0", "L": "\u2028",
            "P": "\u2029"}
_HEX = {"x": 2, "u": 4, "U": 8}


def read_front_matter(text: str) -> dict[str, Any]:
    """The front matter of a card's text as {key: value} ({} when the text has none).

    Values: str, int, float, bool, None, a list of those, or UNREAD for what lies outside the subset (see the module
    docstring). Raises FrontMatterError for a text that opens front matter and is not valid front matter."""
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[0].rstrip("\r ") != "---":
        return {}
    body: list[str] = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if line.rstrip() in ("---", "..."):
            break
        body.append(line)
    else:
        raise FrontMatterError("its front matter has no closing '---' line")
    out: dict[str, Any] = {}
    key: str | None = None
    block: list[str] = []
    inline: str | None = None

    def close() -> None:
        if key is not None:
            out[key] = _value(key, inline, block)

    for n, line in enumerate(body, 2):
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        if stripped[0] == "\t" or "\t" in line[: len(line) - len(stripped)]:
            raise FrontMatterError(f"line {n} of its front matter is indented with a tab")
        if line[0] != " " and not _ITEM.fullmatch(line):
            m = _KEY.fullmatch(line)
            if m is None:
                raise FrontMatterError(f"line {n} of its front matter is not 'key: value'")
            close()
            key, inline, block = m.group(1), m.group(2), []
            if key in out:
                raise FrontMatterError(f"its front matter has the key {key!r} twice")
            continue
        if key is None:
            raise FrontMatterError(f"line {n} of its front matter is indented under no key")
        block.append(line)
    close()
    return out


def _value(key: str, inline: str | None, block: list[str]) -> Any:
    """The value of one top-level key: an inline value, or a block below it (a list of scalars; else UNREAD)."""
    if inline is not None and inline.strip() and not inline.lstrip().startswith("#"):
        first = inline.strip()
        if block:  # a block scalar (| or >) or a multi-line flow value: outside the subset
            if first[0] in "|>\"'[{&!*":
                return UNREAD
            raise FrontMatterError(f"the value of {key!r} continues on an indented line (a multi-line plain scalar)")
        return _inline(key, first)
    if not block:
        return None
    items = [_ITEM.fullmatch(line) for line in block]
    if not all(items) or len({m.group(1) for m in items}) != 1:  # nested mappings, lists of lists: not read
        return UNREAD
    texts = [(m.group(2) or "").strip() for m in items]
    if any(_KEY.fullmatch(t) or t == "-" or t.startswith(("- ", "[")) for t in texts):  # of mappings (widget:), of lists
        return UNREAD
    return [_inline(key, t) if t and not t.startswith("#") else None for t in texts]


def _inline(key: str, s: str) -> Any:
    if s[0] in "{&*!|>":
        return UNREAD
    if s[0] in "%@`":
        raise FrontMatterError(f"the value of {key!r} starts with the reserved character {s[0]!r}")
    if s[0] == "[":
        return _flow_list(key, s)
    value, i = _scalar(key, s, 0)
    _end(key, s, i)
    return value


def _skip_spaces(s: str, i: int) -> int:
    while i < len(s) and s[i] == " ":
        i += 1
    return i


def _flow_list(key: str, s: str) -> Any:
    out: list[Any] = []
    i = _skip_spaces(s, 1)
    if s.startswith("]", i):
        _end(key, s, i + 1)
        return out
    while True:
        if i >= len(s) or s[i] in "[{":
            raise FrontMatterError(f"the list of {key!r} holds a nested or unterminated value")
        if s[i] in "&*!|>":
            return UNREAD
        value, i = _scalar(key, s, i, flow=True)
        out.append(value)
        i = _skip_spaces(s, i)
        if s.startswith(",", i):
            i = _skip_spaces(s, i + 1)
            continue
        if s.startswith("]", i):
            _end(key, s, i + 1)
            return out
        raise FrontMatterError(f"the list of {key!r} is not closed by ']'")


def _end(key: str, s: str, i: int) -> None:
    rest = s[_skip_spaces(s, i) :]
    if rest and not rest.startswith("#"):
        raise FrontMatterError(f"the value of {key!r} has text after its end: {rest[:40]!r}")


_PLAIN_END = re.compile(r" #")
_QUOTE_OR_ESCAPE = re.compile(r'["\\]')
_FLOW_PLAIN_END = re.compile(r"[,\]]| #")


def _scalar(key: str, s: str, i: int, flow: bool = False) -> tuple[Any, int]:
    """(value, index after it) of the scalar that starts at s[i]."""
    if s[i] == '"':
        return _double_quoted(key, s, i)
    if s[i] == "'":
        parts, i = [], i + 1
        while True:
            j = s.find("'", i)
            if j < 0:
                raise FrontMatterError(f"the value of {key!r} has an unterminated quote")
            parts.append(s[i:j])
            if s.startswith("'", j + 1):
                parts.append("'")
                i = j + 2
                continue
            return "".join(parts), j + 1
    stop = (_FLOW_PLAIN_END if flow else _PLAIN_END).search(s, i)
    j = stop.start() if stop else len(s)
    plain = s[i:j].rstrip(" ")
    if ": " in plain or plain.endswith(":"):
        raise FrontMatterError(f"the value of {key!r} holds a mapping ({plain[:40]!r}): quote it")
    return _typed(plain), j


def _double_quoted(key: str, s: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    i += 1
    while i < len(s):
        m = _QUOTE_OR_ESCAPE.search(s, i)
        if m is None:
            break
        j = m.start()
        out.append(s[i:j])
        if s[j] == '"':
            return "".join(out), j + 1
        e = s[j + 1 : j + 2]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i = j + 2
        elif e in _HEX:
            digits = s[j + 2 : j + 2 + _HEX[e]]
            if len(digits) != _HEX[e] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise FrontMatterError(f"the value of {key!r} has a bad \\{e} escape")
            cp = int(digits, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise FrontMatterError(f"the value of {key!r} escapes U+{cp:X}, which is not a character")
            out.append(chr(cp))
            i = j + 2 + _HEX[e]
        else:
            raise FrontMatterError(f"the value of {key!r} has an unknown escape \\{e}")
    raise FrontMatterError(f"the value of {key!r} has an unterminated quote")


def _typed(plain: str) -> Any:
    """A plain scalar in YAML 1.2's core schema: null, bool, int, float, else the string."""
    if plain in ("", "~", "null", "Null", "NULL"):
        return None
    if plain in ("true", "True", "TRUE"):
        return True
    if plain in ("false", "False", "FALSE"):
        return False
    if len(plain) <= 40 and _INT.fullmatch(plain):
        return int(plain)
    if len(plain) <= 40 and _FLOAT.fullmatch(plain):
        return float(plain)
    return plain


# ---------------------------------------------------------------------------------------------- writing front matter
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_./+-]*")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}  # what a YAML 1.1 reader types
_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def dump_front_matter(meta: dict[str, Any]) -> str:
    """The front matter block (with its `---` lines) of `meta`: keys as given (simple names), values str, int,
    float, bool, None or lists of those; a string is written plain only when no YAML reader can take it for
    anything else, else double-quoted with every non-printable character escaped."""
    lines = ["---"]
    for k, v in meta.items():
        if not _KEY_NAME.fullmatch(k) or k.lower() in _YAML11_WORDS:
            raise ValueError(f"front matter key {k!r} is not a simple name")
        if isinstance(v, (list, tuple)):
            lines.append(f"{k}:")
            lines += [f"- {_dump_scalar(x)}" for x in v]
        else:
            lines.append(f"{k}: {_dump_scalar(v)}")
    return "\n".join([*lines, "---"]) + "\n"


def _dump_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("front matter numbers must be finite")
        r = repr(v)  # YAML 1.1 readers want a dot in the mantissa and a signed exponent: 1.0e+16, not 1e+16
        mantissa, e, exponent = r.partition("e")
        return (mantissa if "." in mantissa else mantissa + ".0") + e + exponent
    if not isinstance(v, str):
        raise TypeError(f"front matter values are str, int, float, bool or None, not {type(v).__name__}")
    if _PLAIN.fullmatch(v) and v.lower() not in _YAML11_WORDS:
        return v
    return '"' + "".join(_escape(c) for c in v) + '"'


def _escape(c: str) -> str:
    cp = ord(c)
    if c in '"\\':
        return "\\" + c
    if c in "\n\t\r":
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}[c]
    if 0x20 <= cp <= 0x7E or (0xA0 <= cp <= 0xFFFD and not 0xD800 <= cp <= 0xDFFF and cp not in (0x2028, 0x2029, 0xFEFF)) \
            or 0x10000 <= cp <= 0x10FFFF:
        return c
    if 0xD800 <= cp <= 0xDFFF:  # a lone surrogate (an undecodable file name): not a character
        return "\\uFFFD"
    return f"\\x{cp:02X}" if cp <= 0xFF else f"\\u{cp:04X}"


# ---------------------------------------------------------------------------------------------- the base model's card
@dataclass(frozen=True)
class BaseCard:
    """What an output keeps from its input's card: the license keys (CARRIED) and the language list."""

    license: dict[str, str] = field(default_factory=dict)
    language: list[str] | None = None


def base_card(folder: Path) -> BaseCard:
    """The license and language of the model card in `folder` (its README.md), if it has one that can be read; a
    card that cannot (too big, not UTF-8, not front matter) gives nothing, with a warning."""
    p = Path(folder) / CARD
    if not p.is_file():
        return BaseCard()
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_BASE_CARD)
        if len(raw) == MAX_BASE_CARD:  # cut at a line end: a whole UTF-8 character, and no half line read as whole
            raw = raw[: raw.rfind(b"\n") + 1]
        meta = read_front_matter(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, FrontMatterError) as e:
        logging.getLogger("embtool").warning(f"{p}: cannot read its front matter ({e}); the output's card names no "
                                             "license: add the base model's license to it before you publish it")
        return BaseCard()
    lic = {k: meta[k] for k in CARRIED if isinstance(meta.get(k), str)}
    lang = meta.get("language")
    lang = [lang] if isinstance(lang, str) else lang
    lang = [x for x in lang if isinstance(x, str)] if isinstance(lang, list) else None
    return BaseCard(lic, lang or None)


# ---------------------------------------------------------------------------------------------- the output's card
@dataclass
class Facts:
    """What a card says, digested from the output's record by core/formats/record.py, plus the command's summary."""

    base_id: str | None  # the Hub id the chain started from, if any
    base_commit: str | None
    base_folder: str | None  # the local folder it started from, if not a Hub id
    steps: list[tuple[str, dict[str, Any]]]  # (command, arguments), oldest first; the last is this command
    trimmed: bool
    new_vocabulary: bool
    quantized_bits: list[int]
    factorized: bool
    vocabulary_changed: bool  # this command gave the model another vocabulary
    base: BaseCard
    summary: dict[str, Any]


def write(folder: Path, facts: Facts) -> Path:
    """Write the card of the finished output `folder` (replacing any README.md copied from the input)."""
    p = Path(folder) / CARD
    text = render(Path(folder), facts)
    with open(p, "w", encoding="utf-8") as f:
        f.write(text)
    return p


def st_loadable(folder: Path, facts: Facts) -> bool:
    """Whether sentence-transformers loads the output as it is: safetensors weights of a sentence-transformers
    model, neither quantized nor factorized (both are embtool's own layouts)."""
    return ((folder / "model.safetensors").is_file() and (folder / "modules.json").is_file()
            and not facts.quantized_bits and not facts.factorized)


def front_matter(folder: Path, facts: Facts) -> dict[str, Any]:
    """The card's metadata (see the module docstring)."""
    st = st_loadable(folder, facts)
    meta: dict[str, Any] = {}
    if facts.base_id:
        meta["base_model"] = facts.base_id
        if facts.quantized_bits:
            meta["base_model_relation"] = "quantized"
    meta["library_name"] = "sentence-transformers" if st else "embtool"
    meta["pipeline_tag"] = "sentence-similarity"
    meta.update(facts.base.license)
    lang = _languages(facts)
    if lang:
        meta["language"] = lang
    meta["tags"] = _tags(folder, facts, st)
    return meta


def _languages(facts: Facts) -> list[str] | None:
    if not facts.vocabulary_changed:
        return facts.base.language
    ev = facts.summary.get("eval") if isinstance(facts.summary.get("eval"), dict) else {}
    langs = ev.get("languages") if ev.get("source") == "built-in sample" else None
    return [str(x) for x in langs] if isinstance(langs, list) and langs else None


def _tags(folder: Path, facts: Facts, st: bool) -> list[str]:
    tags = ["embtool"]
    if st:
        tags.append("sentence-transformers")
    tags.append("sentence-similarity")
    if facts.trimmed:
        tags.append("trimmed")
    if facts.new_vocabulary:
        tags.append("new-vocabulary")
    tags += [f"quantized-{b}bit" for b in facts.quantized_bits]
    if len(facts.quantized_bits) > 1:
        tags.append("mixed-precision")
    if facts.factorized:
        tags.append("factorized")
    if any(folder.glob("*.onnx")) or any(folder.glob("onnx/*.onnx")):
        tags.append("onnx")
    return tags


def render(folder: Path, facts: Facts) -> str:
    """The whole card: front matter, then the body (see the module docstring)."""
    st = st_loadable(folder, facts)
    base = facts.base_id or facts.base_folder or "an unnamed model"
    done = _done(facts)
    out = [dump_front_matter(front_matter(folder, facts)), f"# {_md(base.rsplit('/', 1)[-1])}, {done}", ""]
    if facts.base_id:
        at = f" at commit `{_code(facts.base_commit)}`" if facts.base_commit else ""
        name = (f"[{_md(facts.base_id)}](https://huggingface.co/{facts.base_id})" if _HUB_ID.fullmatch(facts.base_id)
                else f"`{_code(facts.base_id)}`")
        out.append(f"This model is {name}{at}, {done} with embtool (no retraining).")
    else:
        out.append(f"This model is the local model folder `{_code(base)}`, {done} with embtool (no retraining). "
                   "Add `base_model: <its Hub id>` to the metadata above if it came from the Hub.")
    if facts.base.license:
        out.append(f"It keeps the base model's license ({_md(facts.base.license.get('license', 'see above'))}).")
    else:
        out.append("The base model's card named no license: check the base model's terms before you publish this.")
    out += ["", "## What was done", "", "| step | command | options |", "|---|---|---|"]
    for i, (command, args) in enumerate(facts.steps, 1):
        out.append(f"| {i} | `{_code(command)}` | {_options(args)} |")
    out += ["", "Every option, the inputs' fingerprints and a sha256 of every file are in `embtool.json`; "
            "`embtool inspect` shows the steps.", ""]
    out += _fidelity(facts)
    out += _usage(st)
    return "\n".join(out).rstrip("\n") + "\n"


def _done(facts: Facts) -> str:
    parts = []
    if facts.trimmed:
        parts.append("vocabulary trimmed")
    if facts.new_vocabulary:
        parts.append("given a new vocabulary")
    if facts.quantized_bits:
        parts.append(f"quantized to {'/'.join(map(str, facts.quantized_bits))} bits")
    if facts.factorized:
        parts.append("embedding table factorized")
    if not parts:
        parts.append(f"converted by {facts.steps[-1][0] if facts.steps else 'embtool'}")
    return ", ".join(parts)


def _options(args: dict[str, Any]) -> str:
    shown = [f"`{_code(k)}={_code(_plain_value(v))}`" for k, v in args.items() if v not in (None, False, [], "", {})]
    return ", ".join(shown) or "defaults"


def _plain_value(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("file") or v.get("folder") or v)
    if isinstance(v, list):
        return ",".join(_plain_value(x) for x in v)
    return str(v)


def _fidelity(facts: Facts) -> list[str]:
    s = facts.summary
    ev = s.get("eval") if isinstance(s.get("eval"), dict) else None
    command = facts.steps[-1][0] if facts.steps else "embtool"
    out = ["## Fidelity", ""]
    if ev is None:
        out += [f"Not measured by `{_code(command)}` (no fidelity check ran: --no-eval, or no tokenizer).", ""]
    else:
        where = str(ev.get("source", "held-out texts"))
        if ev.get("languages"):
            where += f": {', '.join(map(str, ev['languages']))}"
        against = ("the base model" if command == "shrink" or len(facts.steps) == 1
                   else "this command's input (the model of the step before)")
        out += [f"Measured by `{_code(command)}` on {ev.get('texts', '?')} held-out texts ({_md(where)}), against "
                f"{against}:", "", "| measure | value |", "|---|---|"]
        for key, name in (("cosine_mean", "cosine, mean"), ("cosine_min", "cosine, min"), ("recall@10", "recall@10")):
            if isinstance(ev.get(key), (int, float)):
                out.append(f"| {name} | {ev[key]:.4f} |")
    rows = []
    for key, name in (("bytes_before", "weights before"), ("bytes_after", "weights after")):
        if isinstance(s.get(key), int):
            rows.append(f"| {name} | {_size(s[key])} ({s[key]:,} bytes) |")
    if rows:
        out += ([] if ev is not None else ["| measure | value |", "|---|---|"]) + rows
    return [*out, ""]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _usage(st: bool) -> list[str]:
    out = ["## How to use it", ""]
    if st:
        out += ["With sentence-transformers:", "", "```python", "from sentence_transformers import SentenceTransformer",
                "", 'model = SentenceTransformer("path/to/this/folder")', 'vectors = model.encode(["A first text.", '
                '"A second one."])', "```", "", "With embtool (onnxruntime, no PyTorch):", ""]
    else:
        out += ["With embtool (onnxruntime, no PyTorch; sentence-transformers cannot load this model's weights "
                "as they are):", ""]
    out += ["```python", "import embtool", "", 'encoder = embtool.Encoder("path/to/this/folder")',
            'vectors = encoder.embed(["A first text.", "A second one."])', "```", "", "```sh",
            'embtool embed path/to/this/folder "A first text." "A second one."', "```"]
    return out


def _code(s: Any) -> str:
    """Text for inside a Markdown code span in a table: no backticks, pipes or line breaks, bounded, encodable."""
    t = str(s).encode("utf-8", "replace").decode("utf-8")
    t = t.replace("`", "'").replace("|", "/").replace("\r", " ").replace("\n", " ")
    return t if len(t) <= 120 else t[:119] + "…"


def _md(s: Any) -> str:
    """Text for Markdown prose: Markdown and HTML characters escaped."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~])", r"\\\1", _code(s))
