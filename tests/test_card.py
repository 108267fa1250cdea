"""Model cards (core/card.py): the README.md of every output, its front matter reader and writer (a strict YAML
subset, tested against hostile input and against a real YAML parser), and what a card says."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embtool
from embtool.core import card
from embtool.core.card import UNREAD, FrontMatterError, dump_front_matter, read_front_matter
from conftest import run_cli

# the top of a real sentence-transformers card: scalars, block lists, a list of mappings, a nested model-index
ST_CARD = """---
language: en
license: apache-2.0  # the base model's
library_name: sentence-transformers
tags:
- sentence-transformers
- feature-extraction
datasets: [s2orc, 'ms_marco', "gooaq"]
widget:
- source_sentence: "That is a happy person"
  sentences:
  - That is a happy dog
model-index:
- name: all-MiniLM
  results:
  - task: {type: STS}
description: |
  a block scalar
  of two lines
pipeline_tag: sentence-similarity
empty:
---

# all-MiniLM-L6-v2
This is a sentence-transformers model.
"""


def test_the_reader_reads_what_a_card_holds_and_skips_the_rest():
    meta = read_front_matter(ST_CARD)
    assert meta == {"language": "en", "license": "apache-2.0", "library_name": "sentence-transformers",
                    "tags": ["sentence-transformers", "feature-extraction"], "datasets": ["s2orc", "ms_marco", "gooaq"],
                    "widget": UNREAD, "model-index": UNREAD, "description": UNREAD,
                    "pipeline_tag": "sentence-similarity", "empty": None}
    assert read_front_matter("# just a README\n---\nlicense: mit\n---\n") == {}  # front matter only at the top
    assert read_front_matter("\ufeff---\r\nlicense: 'it''s mine'\r\n---\r\n") == {"license": "it's mine"}


@pytest.mark.parametrize("text, why", [
    ("---\nlicense: mit\n", "no closing"),
    ("---\nlicense: mit\nlicense: gpl\n---\n", "twice"),
    ("---\ntags:\n\t- a\n---\n", "tab"),
    ("---\n  license: mit\n---\n", "under no key"),
    ("---\nlicense: \"mit\n---\n", "unterminated quote"),
    ("---\nlicense: 'mit\n---\n", "unterminated quote"),
    ("---\nlicense: \"a\\qb\"\n---\n", "unknown escape"),
    ("---\nlicense: \"\\ud800\"\n---\n", "not a character"),
    ("---\nlicense: \"\\x4\"\n---\n", "bad \\x escape"),
    ("---\nlicense: a: b\n---\n", "holds a mapping"),
    ("---\nlicense: \"mit\" extra\n---\n", "text after its end"),
    ("---\nlicense: [a, [b]]\n---\n", "nested or unterminated"),
    ("---\nlicense: [a, b\n---\n", "not closed"),
    ("---\nlicense: @mit\n---\n", "reserved character"),
    ("---\nlicense: mit\n  continued\n---\n", "multi-line plain scalar"),
    ("---\n[license]: mit\n---\n", "not 'key: value'"),
])
def test_the_reader_refuses_what_is_not_front_matter(text, why):
    with pytest.raises(FrontMatterError, match=None) as e:
        read_front_matter(text)
    assert why in str(e.value)


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_the_reader_never_fails_otherwise(body):
    for text in (body, "---\n" + body, "---\n" + body + "\n---\n", "---\nkey: " + body + "\n---\n"):
        try:
            meta = read_front_matter(text)
        except FrontMatterError:
            continue
        assert isinstance(meta, dict)


def test_the_reader_is_linear_on_huge_lines():
    """Megabyte lines of quotes, escapes and list items: read in one pass (a quadratic reader would not return)."""
    n = 500_000
    assert read_front_matter('---\nk: "' + "\\n" * n + '"\n---\n')["k"] == "\n" * n
    assert len(read_front_matter("---\nk: [" + "a, " * n + "b]\n---\n")["k"]) == n + 1
    assert read_front_matter("---\nk: '" + "''" * n + "'\n---\n")["k"] == "'" * n
    assert len(read_front_matter("---\nk:\n" + "- x\n" * n + "---\n")["k"]) == n
    with pytest.raises(FrontMatterError):
        read_front_matter('---\nk: "' + "\\n" * n + "\n---\n")


_VALUE = st.one_of(st.text(st.characters(blacklist_categories=("Cs",))), st.none(), st.booleans(),
                   st.integers(-10**17, 10**17), st.floats(allow_nan=False, allow_infinity=False))
_KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,15}", fullmatch=True).filter(lambda k: k.lower() not in card._YAML11_WORDS)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, st.one_of(_VALUE, st.lists(_VALUE, min_size=1, max_size=4)), max_size=6))
def test_written_front_matter_reads_back_as_written(meta):
    """The writer quotes every string a reader could take for anything else: its output reads back identically with
    this reader and with a full YAML parser."""
    text = dump_front_matter(meta)
    assert read_front_matter(text + "body\n") == meta
    yaml = pytest.importorskip("yaml", reason="PyYAML (installed with the ray extra) cross-checks the quoting")
    assert yaml.safe_load(text.strip().strip("-")) == (meta or None)


def test_written_strings_that_look_like_something_else_are_quoted():
    text = dump_front_matter({"a": "no", "b": "1.5", "c": "null", "d": "x: y", "e": "- z", "f": "# c", "g": "ok-1/2",
                              "h": "line\nbreak", "i": "\u2028\x00\ud800"})
    assert text == ('---\na: "no"\nb: "1.5"\nc: "null"\nd: "x: y"\ne: "- z"\nf: "# c"\ng: ok-1/2\nh: "line\\nbreak"\n'
                    'i: "\\u2028\\x00\\uFFFD"\n---\n')
    for key in ("bad key", "1st", "on", "-x"):
        with pytest.raises(ValueError):
            dump_front_matter({key: "x"})


# ---------------------------------------------------------------------------------------------- the card an output gets
def _base(tiny_bert: Path, where: Path, readme: str | None) -> Path:
    m = where / "base"
    shutil.copytree(tiny_bert, m)
    if readme is not None:
        (m / "README.md").write_text(readme)
    return m


def _meta(folder: Path) -> dict:
    return read_front_matter((folder / "README.md").read_text())


def test_a_trimmed_model_is_loadable_by_sentence_transformers_and_says_so(tiny_bert, tmp_path):
    base = _base(tiny_bert, tmp_path, ST_CARD.replace("language: en", "language: de"))  # not what is left after trimming
    (tmp_path / "c.txt").write_text("hello world\nthe quick brown fox\n")
    r = embtool.trim_vocab(base, tmp_path / "t", corpus=[str(tmp_path / "c.txt")])
    meta = _meta(tmp_path / "t")
    assert meta == {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
                    "license": "apache-2.0", "language": r.summary["eval"]["languages"],
                    "tags": ["embtool", "sentence-transformers", "sentence-similarity", "trimmed"]}
    text = (tmp_path / "t" / "README.md").read_text()
    assert "This is a sentence-transformers model." not in text  # the base card is not copied
    assert 'SentenceTransformer("path/to/this/folder")' in text and 'embtool.Encoder("path/to/this/folder")' in text
    ev = r.summary["eval"]
    for key, name in (("cosine_mean", "cosine, mean"), ("cosine_min", "cosine, min"), ("recall_at_10", "recall@10")):
        assert f"| {name} | {ev[key]:.4f} |" in text
    assert f"({r.summary['bytes_after']:,} bytes)" in text and f"({r.summary['bytes_before']:,} bytes)" in text


def test_processing_again_regenerates_the_card_with_the_chain(tiny_bert, tmp_path):
    base = _base(tiny_bert, tmp_path, "---\nlicense: other\nlicense_name: tiny\nlicense_link: https://x.org/L\n"
                                      "language: [en, fr]\n---\n# base\n")
    embtool.quantize(base, tmp_path / "q", bits=[4])
    embtool.dequantize(tmp_path / "q", tmp_path / "d")
    q, d = (tmp_path / "q" / "README.md").read_text(), (tmp_path / "d" / "README.md").read_text()
    assert _meta(tmp_path / "q") == {"library_name": "embtool", "pipeline_tag": "sentence-similarity", "license": "other",
                                     "license_name": "tiny", "license_link": "https://x.org/L", "language": ["en", "fr"],
                                     "tags": ["embtool", "sentence-similarity", "quantized-4bit"]}
    assert "SentenceTransformer(" not in q and "cannot load this model's weights" in q
    # the dequantized model: loadable again, license and language carried from the quantized model's own card
    assert _meta(tmp_path / "d")["library_name"] == "sentence-transformers" and _meta(tmp_path / "d")["license"] == "other"
    assert d.count("\n---\n") == 1 and d.count("## What was done") == 1 and "quantized-4bit" not in d
    assert "| 1 | `quantize` | `bits=4`" in d and "| 2 | `dequantize` |" in d
    assert "against this command's input" in d


def test_an_unreadable_base_card_gives_a_warning_and_no_license(tiny_bert, tmp_path, caplog):
    base = _base(tiny_bert, tmp_path, "---\nlicense: mit\nlicense: gpl\n---\n")
    with caplog.at_level(logging.WARNING, logger="embtool"):
        embtool.quantize(base, tmp_path / "q", bits=[8])
    assert "cannot read its front matter" in caplog.text and "twice" in caplog.text
    assert "license" not in _meta(tmp_path / "q")
    assert "named no license" in (tmp_path / "q" / "README.md").read_text()
    (base / "README.md").write_bytes(b"---\nlicense: \xff\n---\n")
    r = run_cli(["quantize", base, "--bits", "8", "-o", tmp_path / "q2", "--quiet"])
    assert r.exit_code == 0 and "license" not in _meta(tmp_path / "q2")


def test_hostile_names_stay_inside_their_table_cell(tiny_bert, tmp_path):
    corpus = tmp_path / "a|b`<img src=x>.txt"
    corpus.write_text("hello world\nthe quick brown fox\n")
    embtool.trim_vocab(tiny_bert, tmp_path / "t", corpus=[str(corpus)], no_eval=True)
    text = (tmp_path / "t" / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert row.count("|") == 4 and "`corpus=a/b'<img src=x>.txt`" in row
    assert "Not measured by `trim-vocab`" in text


def test_the_card_is_in_the_manifest_and_the_record_drives_it(tiny_bert, tmp_path):
    embtool.factorize(tiny_bert, tmp_path / "f", rank=8)
    doc = json.loads((tmp_path / "f" / "embtool.json").read_text())
    assert "README.md" in doc["files"]
    assert _meta(tmp_path / "f")["tags"] == ["embtool", "sentence-similarity", "factorized"]
