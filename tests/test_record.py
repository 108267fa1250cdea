"""The model record embtool.json (core/formats/record.py): what every output records (the step, the chain, the input's
source, a sha256 manifest), and the rule --force follows, checked by content."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embtool
from embtool.core.formats import record
from embtool.core.writer import OutputFolder
from conftest import run_cli


@pytest.fixture(scope="module")
def q8(tiny_bert, tmp_path_factory) -> Path:
    """An 8-bit quantized tiny model (an output embtool wrote)."""
    out = tmp_path_factory.mktemp("rec") / "q8"
    embtool.quantize(tiny_bert, out, bits=[8])
    return out


def test_the_manifest_holds_the_size_and_sha256_of_every_other_file(q8):
    doc = record.read(q8)
    files = {str(p.relative_to(q8)) for p in q8.rglob("*") if p.is_file()} - {record.FILE}
    assert set(doc["files"]) == files and "README.md" in files  # the card is covered too
    for rel, entry in doc["files"].items():
        data = (q8 / rel).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _output_copy(q8: Path, where: Path) -> Path:
    out = where / "out"
    shutil.copytree(q8, out)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_edit_of_the_same_size_is_seen(q8, tmp_path_factory, data):
    """Whatever file of an output is changed, at whatever byte, to whatever value: --force may no longer replace it."""
    out = _output_copy(q8, tmp_path_factory.mktemp("edit"))
    assert record.not_replaceable(out) is None
    rel = data.draw(st.sampled_from(sorted(record.read(out)["files"])))
    raw = bytearray((out / rel).read_bytes())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = (raw[at] + data.draw(st.integers(1, 255))) % 256
    (out / rel).write_bytes(bytes(raw))
    assert record.not_replaceable(out) == f"its {rel} changed since embtool wrote it"


def test_what_force_may_not_replace(q8, tmp_path):
    out = _output_copy(q8, tmp_path)
    doc = record.read(out)
    cases = {
        "a file added": (lambda: (out / "1_Pooling" / "mine.txt").write_text("x"), "holds 1_Pooling/mine.txt"),
        "a file made a link": (lambda: ((out / "config.json").unlink(), (out / "config.json").symlink_to(q8 / "config.json")),
                               "its config.json changed since"),
        "an older size-only manifest": (lambda: (out / record.FILE).write_text(json.dumps(
            {**doc, "files": {k: v["size"] for k, v in doc["files"].items()}})), "lists file sizes only"),
        "a malformed entry": (lambda: (out / record.FILE).write_text(json.dumps(
            {**doc, "files": {**doc["files"], "config.json": {"size": "12"}}})), "entry for config.json is malformed"),
        "a record another tool wrote": (lambda: (out / record.FILE).write_text(json.dumps({**doc, "tool": "other"})),
                                        "has no file list"),
        "a record that is not an object": (lambda: (out / record.FILE).write_text("[1, 2]"), "is not one embtool wrote"),
        "no record": (lambda: (out / record.FILE).unlink(), "has no embtool.json"),
    }
    for what, (edit, why) in cases.items():
        shutil.rmtree(out)
        shutil.copytree(q8, out)
        edit()
        got = record.not_replaceable(out)
        assert got is not None and why in got, (what, got)
    shutil.rmtree(out)
    out.mkdir()
    assert record.not_replaceable(out) is None  # an empty folder holds nothing to lose


def test_every_job_records_its_input_and_chain(tiny_bert, tmp_path):
    (tmp_path / "c.txt").write_text("hello world\nthe quick brown fox\n")
    t, q, d = tmp_path / "t", tmp_path / "q", tmp_path / "d"
    embtool.trim_vocab(tiny_bert, t, corpus=[str(tmp_path / "c.txt")])
    embtool.quantize(t, q, bits=[4])
    embtool.dequantize(q, d)
    doc = record.read(d)
    assert [s["command"] for s in doc["chain"]] == ["trim-vocab", "quantize", "dequantize"]
    assert doc["chain"][0]["inputs"]["model_source"] == {"folder": tiny_bert.name}
    assert doc["chain"][1]["inputs"]["model_source"] == {"folder": "t"}
    assert "quantization" not in doc and doc["trim"]["vocab_after"] > 0  # dequantize undoes one state, not the other
    assert record.read(q)["quantization"]["bits"] == [4]
    assert list(doc)[:5] == ["tool", "version", "command", "arguments", "inputs"] and list(doc)[-2:] == ["chain", "files"]


def test_a_hub_input_is_recorded_by_id_revision_and_commit(tiny_bert, tmp_path, monkeypatch):
    """The input's Hub identity (Model.source, set by the Hub resolver) goes into the record and the card."""
    import embtool.jobs.quantize as JQ

    opened = JQ.open_model
    src = SimpleNamespace(id="org/tiny-bert", revision="v1.0", commit="c0ffee" * 6 + "abcd")

    def open_with_source(path, *a, **k):
        m = opened(path, *a, **k)
        if Path(path) == tiny_bert:
            m.source = src
        return m

    monkeypatch.setattr(JQ, "open_model", open_with_source)
    embtool.quantize(tiny_bert, tmp_path / "q", bits=[4])
    doc = record.read(tmp_path / "q")
    assert doc["inputs"]["model_source"] == {"id": "org/tiny-bert", "revision": "v1.0", "commit": src.commit}
    card = (tmp_path / "q" / "README.md").read_text()
    assert "\nbase_model: org/tiny-bert\nbase_model_relation: quantized\n" in card
    assert f"[org/tiny-bert](https://huggingface.co/org/tiny-bert) at commit `{src.commit}`" in card


def test_provenance_is_the_same_for_a_request_and_a_mapping(tiny_bert):
    from embtool.core.model import open_model
    from embtool.jobs.quantize import QuantRequest

    m = open_model(tiny_bert)
    req = QuantRequest(model=str(tiny_bert), output="somewhere", bits=[4], threads=3, force=True)
    a = record.provenance("quantize", req, m)
    b = record.provenance("quantize", {**req.__dict__, "output": "elsewhere"}, m)
    assert a == b and not {"model", "output", "force", "threads"} & set(a["arguments"])
    assert a["inputs"] == {"model": m.fingerprint(), "model_source": {"folder": tiny_bert.name}}


def test_a_folder_without_a_record_still_gets_a_manifest(tmp_path):
    with OutputFolder(tmp_path / "plain") as out:
        (out.path / "a.txt").write_text("a")
    doc = record.read(tmp_path / "plain")
    assert doc["tool"] == "embtool" and set(doc["files"]) == {"a.txt"}
    assert record.not_replaceable(tmp_path / "plain") is None


def test_a_hostile_input_record_is_refused_clearly(tiny_bert, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(tiny_bert, m)
    for text, why in (("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("\xff", "not valid UTF-8"),
                      ('"a string"', "not a JSON object")):
        (m / record.FILE).write_bytes(text.encode("latin-1"))
        r = run_cli(["quantize", m, "--bits", "8", "-o", tmp_path / "q", "--quiet"])
        assert r.exit_code == 1 and r.stderr.startswith("Error: ") and why in r.stderr, r.stderr
        assert not (tmp_path / "q").exists()
