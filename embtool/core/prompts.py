"""Prompts a model's card says its texts need, when its folder declares none.

Many embedding models are trained with a text before every input (multilingual-e5: `query: ` / `passage: `; nomic:
`search_query: ` / `search_document: `; bge: `Represent this sentence for searching relevant passages: `) but ship no
`config_sentence_transformers.json` prompts: only the model card (README.md) says so, in prose or in its usage code.
A command that trims the vocabulary to a corpus read without them drops the prompt's tokens; this module finds them
so that trim-vocab and shrink keep and measure them (and warn). Read from the card, bounded (CARD_BYTES), as text:
nothing in it is executed or trusted beyond the prompt strings it names.
"""

from __future__ import annotations

import re
from pathlib import Path

CARD_BYTES = 1 << 20  # a model card's head: its usage section is near the top; the rest (MTEB tables) is skipped
MAX_PROMPT_CHARS = 200

_NOMIC = re.compile(r"""\b(search_(?:query|document|clustering|classification)): ?""")
_REPRESENT = re.compile(r"""["'`](Represent this sentence[^"'`\n]{0,160}?: ?)["'`]""")
# sentence-transformers' usage code: prompts={"query": "...", ...} or SentenceTransformer(..., prompts={...})
_ST_PROMPTS = re.compile(r"""prompts\s*=\s*\{([^{}]{0,2000})\}""")
_PAIR = re.compile(r"""["']([A-Za-z_][\w-]{0,40})["']\s*:\s*(["'])(.{1,%d}?)\2""" % MAX_PROMPT_CHARS)


def read_card(root: Path) -> str:
    """The head of the folder's README.md (CARD_BYTES at most, undecodable bytes replaced); "" when none."""
    p = Path(root) / "README.md"
    if not p.is_file():
        return ""
    try:
        with open(p, "rb") as f:
            return f.read(CARD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def card_prompts(text: str) -> dict[str, str]:
    """{name: prompt text} the card documents, in a fixed order: e5's `query: `/`passage: `, nomic's `search_*: `,
    bge's `Represent this sentence...: ` (as "query"), and sentence-transformers `prompts={...}` in usage code."""
    out: dict[str, str] = {}
    for m in _ST_PROMPTS.finditer(text):
        for name, _, value in _PAIR.findall(m.group(1)):
            out.setdefault(name, value)
    for name in ("query", "passage"):  # quoted, or starting a string of the usage code
        if re.search(r"""["'`]%s: """ % name, text):
            out.setdefault(name, f"{name}: ")
    for m in _NOMIC.finditer(text):
        out.setdefault(m.group(1).split("_", 1)[1], m.group(1) + ": ")
    m = _REPRESENT.search(text)
    if m:
        out.setdefault("query", m.group(1) if m.group(1).endswith(" ") else m.group(1) + " ")
    return {k: v for k, v in out.items() if v.strip() and len(v) <= MAX_PROMPT_CHARS}
