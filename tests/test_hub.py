"""Models by Hub id (issue 32): `org/name[@revision]` parsed strictly, resolved from a Hub cache laid out as
huggingface_hub writes it (tests/fakehub.py builds one in a temporary HF_HOME from the tiny models), and downloaded
through huggingface_hub from a fake Hub on 127.0.0.1 (no machine here reaches the real one)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import run_cli
from fakehub import FakeHub, Repo, cache_repo, commit_of, etag, folder_files

from embtool.core import hub
from embtool.core.errors import ModelNotFound, UnsafeModel

A, B = commit_of("A"), commit_of("B")  # org/tiny: main (the BERT) and tag v1 (the XLM-R)
HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
           "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "XDG_CACHE_HOME")
ROOT = Path(__file__).resolve().parent.parent


def one_error(r, exit_code: int = 1) -> str:
    """The command failed with exactly one `Error:` line (notes may precede it) and no traceback."""
    assert r.exit_code == exit_code, (r.exit_code, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hf_env(monkeypatch):
    """No Hugging Face setting of the machine leaks into a test."""
    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------------------------
# Ids
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, repo, revision", [
    ("org/name", "org/name", None),
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", None),
    ("Org_1/na.me-2@main", "Org_1/na.me-2", "main"),
    ("org/name@v1.0", "org/name", "v1.0"),
    ("org/name@refs/pr/1", "org/name", "refs/pr/1"),
    (f"org/name@{A.upper()}", "org/name", A),
])
def test_valid_ids(text, repo, revision):
    assert hub.parse_id(text) == hub.HubId(repo, revision)


@pytest.mark.parametrize("text", [
    "org", "org/name/more", "/org/name", "./org/name", "org/..", "../name", "org/na..me", "org--x/name", "org/-name",
    "org/name.git", "C:/name", "org/ná", "org/name@", "org/name@..", "org/name@a..b", "org/name@bad~rev",
    "org/name@a b", "org/name@.hidden", "org/name@x.lock", "org/name@a//b", "org/name@refs/../x", "org/name@/x",
    "org/name@x/", "org/na\x00me", "org/" + "n" * 97,
])
def test_invalid_ids(text):
    with pytest.raises(ValueError):
        hub.parse_id(text)


@settings(max_examples=int(os.environ.get("EMBTOOL_FUZZ_EXAMPLES", 300)), deadline=None)
@given(st.text(alphabet=st.sampled_from("ab/.-_@~:\\ \x00Z9é"), max_size=30))
def test_no_id_leads_outside_the_cache(text):
    """Whatever the text, a parsed id names one repository folder directly in the cache and a ref file inside
    its refs/ folder: no id walks out of the cache."""
    try:
        hid = hub.parse_id(text)
    except ValueError:
        return
    cache = Path("/cache")
    folder = hub.repo_folder(cache, hid.repo)
    assert folder.parent == cache and folder.name.startswith("models--") and "/" not in folder.name
    ref = os.path.normpath(folder / "refs" / hid.ref)
    assert ref.startswith(str(folder / "refs") + "/")


def test_cache_folder_follows_the_environment_as_huggingface_hub_does(hf_env, tmp_path):
    home = Path.home()
    assert hub.cache_root() == home / ".cache" / "huggingface" / "hub"
    hf_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_root() == tmp_path / "xdg" / "huggingface" / "hub"
    hf_env.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_root() == tmp_path / "home" / "hub"
    hf_env.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub.cache_root() == tmp_path / "legacy"
    hf_env.setenv("HF_HUB_CACHE", "~/hfc")
    assert hub.cache_root() == home / "hfc"
    assert hub.cache_root(tmp_path / "given") == tmp_path / "given"
    for value, expected in (("1", True), ("yes", True), ("TRUE", True), ("0", False), ("", False)):
        hf_env.setenv("HF_HUB_OFFLINE", value)
        assert hub.offline() is expected


# ----------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------

def shard(folder: Path, out: Path) -> Path:
    """The folder with its weights split into two safetensors shards and an index."""
    import shutil

    from embtool.core.safetensors_io import SafetensorsFile, write_safetensors

    shutil.copytree(folder, out)
    (out / "model.safetensors").unlink()
    st_ = SafetensorsFile(folder / "model.safetensors")
    names = sorted(st_.tensors)
    wm = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        write_safetensors(out / fname, {k: np.array(st_.get(k)) for k in part}, {"format": "pt"})
        wm.update({k: fname for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return out


def onnx_with_external_data(tiny_bert: Path, out: Path) -> Path:
    """The tiny BERT exported as optimum lays it out: onnx/model.onnx with its weights in onnx/model.onnx_data."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    assert run_cli(["export-onnx", tiny_bert, "-o", out / "x", "--quiet"]).exit_code == 0
    (out / "m" / "onnx").mkdir(parents=True)
    for rel, data in folder_files(out / "x").items():
        if not rel.startswith(("model.onnx", "embtool.json")):
            (out / "m" / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / "m" / rel).write_bytes(data)
    m = onnx.load(str(out / "x" / "model.onnx"))
    onnx.save(m, str(out / "m" / "onnx" / "model.onnx"), save_as_external_data=True, location="model.onnx_data",
              size_threshold=0)
    return out / "m"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_models) -> Path:
    """A Hub cache: org/tiny at two revisions, a sharded and an ONNX model, a tokenizer-only repository, and the
    broken ones (a snapshot without weights, a dangling link, a link out of the cache, a link loop)."""
    base = tmp_path_factory.mktemp("hubcache")
    c = base / "hf" / "hub"
    bert, xlmr = tiny_models["bert"], tiny_models["xlm-roberta"]
    cache_repo(c, "org/tiny", A, folder_files(bert))
    cache_repo(c, "org/tiny", B, folder_files(xlmr), refs=("v1",))
    cache_repo(c, "org/sharded", A, folder_files(shard(bert, base / "sharded")))
    cache_repo(c, "org/onnx", A, folder_files(onnx_with_external_data(bert, base / "onnx")))
    cache_repo(c, "org/tok", A, {"tokenizer.json": (xlmr / "tokenizer.json").read_bytes()})
    files = folder_files(bert)
    cache_repo(c, "org/partial", A, {k: v for k, v in files.items() if k != "model.safetensors"})
    snap = cache_repo(c, "org/dangling", A, files)
    (c / "models--org--dangling" / "blobs" / etag("model.safetensors", files["model.safetensors"])).unlink()
    outside = base / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(files["model.safetensors"])
    snap = cache_repo(c, "org/escape", A, files)
    (snap / "model.safetensors").unlink()
    os.symlink(outside / "model.safetensors", snap / "model.safetensors")
    cache_repo(c, "org/deep", A, dict(files, **{"modules.json": b"[" * 100_000 + b"]" * 100_000}))
    snap = cache_repo(c, "org/loop", A, files)
    (snap / "model.safetensors").unlink()
    os.symlink("model.safetensors", snap / "model.safetensors")
    return c


@pytest.fixture
def offline_cache(hf_env, cache):
    hf_env.setenv("HF_HOME", str(cache.parent))
    hf_env.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_inspect_resolves_the_revision_to_its_commit(offline_cache):
    r = run_cli(["inspect", "org/tiny"])
    assert r.exit_code == 0, r.stderr
    assert f"org/tiny@main (commit {A})" in r.stdout
    for arg, revision, commit, vocab_model in (("org/tiny", "main", A, "WordPiece"), ("org/tiny@v1", "v1", B, "Unigram"),
                                               (f"org/tiny@{B}", B, B, "Unigram")):
        r = run_cli(["inspect", arg, "--json"])
        assert r.exit_code == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["source"] == {"id": "org/tiny", "revision": revision, "commit": commit}
        assert d["tokenizer"]["type"] == vocab_model
        assert d["model"] == str(offline_cache / "models--org--tiny" / "snapshots" / commit)


def test_encoder_from_a_hub_id_embeds_as_the_folder_does(offline_cache, tiny_bert):
    import embtool

    enc = embtool.Encoder("org/tiny")
    assert enc.model.source == hub.HubSource("org/tiny", "main", A)
    assert enc.model.source.pinned == f"org/tiny@{A}"
    local = embtool.Encoder(tiny_bert)
    assert local.model.source is None
    texts = ["hello world", "Le renard brun saute."]
    assert np.array_equal(enc.embed(texts), local.embed(texts))


def test_sharded_and_onnx_external_data_snapshots_open(offline_cache, tiny_bert):
    """A shard or an ONNX file's external data in a snapshot is a link into blobs/: inside the model, not out."""
    import embtool

    ref = embtool.Encoder(tiny_bert).embed(["hello world"])
    for arg in ("org/sharded", "org/onnx"):
        enc = embtool.Encoder(arg)
        assert enc.model.source.commit == A
        assert np.allclose(enc.embed(["hello world"]), ref, atol=1e-5)
    d = embtool.inspect("org/onnx")
    assert d["weight_files"] == ["onnx/model.onnx", "onnx/model.onnx_data"]


def test_model_writing_commands_take_a_hub_id_and_never_touch_the_cache(offline_cache, tmp_path):
    before = tree_bytes(offline_cache)
    r = run_cli(["quantize", "org/tiny", "--bits", "8", "-o", tmp_path / "q8", "--quiet"])
    assert r.exit_code == 0, r.stderr
    r = run_cli(["shrink", f"org/tiny@{A}", "-c", ROOT / "tests" / "conftest.py", "--max-size", "1GB", "-o", tmp_path / "s",
                 "--quiet"])
    assert r.exit_code == 0, r.stderr
    import embtool

    res = embtool.trim_vocab("org/tiny@v1", tmp_path / "t", corpus=[str(ROOT / "tests" / "conftest.py")], top=50)
    assert res.written
    assert tree_bytes(offline_cache) == before


def test_outputs_record_the_hub_id_and_commit_of_their_input(offline_cache, tmp_path):
    r = run_cli(["quantize", "org/tiny@v1", "--bits", "8", "-o", tmp_path / "q", "--quiet"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads((tmp_path / "q" / "embtool.json").read_text())
    assert doc["inputs"]["model_source"] == {"id": "org/tiny", "revision": "v1", "commit": B}
    assert "base_model: org/tiny" in (tmp_path / "q" / "README.md").read_text()


def test_an_index_records_the_pinned_id_and_search_resolves_it_again(offline_cache, tmp_path):
    out = tmp_path / "ix.safetensors"
    r = run_cli(["embed", "org/tiny@v1", "a first text", "another text", "-o", out, "--quiet"])
    assert r.exit_code == 0, r.stderr
    import embtool

    assert embtool.open_index(out).meta["model"] == f"org/tiny@{B}"
    r = run_cli(["search", out, "a first text", "-k", "1", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split("\t")[4].strip() == "a first text"


def test_tokenizers_by_hub_id(offline_cache, tmp_path, tiny_models):
    """--tokenizer of a model without one, and init-subwords' target tokenizer, as Hub ids."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_models["xlm-roberta"], bare)
    (bare / "tokenizer.json").unlink()
    r = run_cli(["embed", bare, "hello", "--tokenizer", "org/tok", "--quiet"])
    assert r.exit_code == 0, r.stderr
    r = run_cli(["init-subwords", tiny_models["bert"], "--tokenizer", "org/tok", "-o", tmp_path / "new", "--quiet", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "new" / "tokenizer.json").read_bytes() == (tiny_models["xlm-roberta"] / "tokenizer.json").read_bytes()
    r = run_cli(["init-subwords", bare, "--source-tokenizer", "org/tok", "--tokenizer", tiny_models["bert"], "-o", tmp_path / "back",
                 "--quiet", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    assert "no such file or folder" in one_error(run_cli(["embed", bare, "x", "--tokenizer", tmp_path / "nope.json"]))


def test_a_path_that_exists_wins_over_the_hub_id_and_says_so(offline_cache, tmp_path, tiny_models, monkeypatch):
    import shutil

    shutil.copytree(tiny_models["xlm-roberta"], tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    r = run_cli(["inspect", "org/tiny", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["source"] is None and json.loads(r.stdout)["tokenizer"]["type"] == "Unigram"
    assert "note: org/tiny is a local path and also a model in the Hub cache: using the local path" in r.stderr
    r = run_cli(["inspect", "org/tiny@main", "--json"])
    assert json.loads(r.stdout)["source"]["commit"] == A


def test_cache_dir_option(hf_env, cache, tmp_path):
    hf_env.setenv("HF_HOME", str(tmp_path / "empty"))
    hf_env.setenv("HF_HUB_OFFLINE", "1")
    one_error(run_cli(["inspect", "org/tiny"]))
    r = run_cli(["inspect", "org/tiny", "--cache-dir", cache, "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["source"]["commit"] == A
    r = run_cli(["embed", "org/tiny", "hi", "-o", tmp_path / "ix.safetensors", "--cache-dir", cache, "--quiet"])
    assert r.exit_code == 0, r.stderr
    r = run_cli(["search", tmp_path / "ix.safetensors", "hi", "--cache-dir", cache, "--quiet"])
    assert r.exit_code == 0, r.stderr
    one_error(run_cli(["search", tmp_path / "ix.safetensors", "hi", "--quiet"]))


def test_offline_with_an_empty_cache_names_the_id_and_says_nothing_is_cached(hf_env, tmp_path):
    hf_env.setenv("HF_HOME", str(tmp_path))
    hf_env.setenv("HF_HUB_OFFLINE", "1")
    line = one_error(run_cli(["embed", "org/none@v2", "hello", "-o", tmp_path / "x.npy"]))
    assert "org/none@v2" in line and "nothing is cached" in line and "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "x.npy").exists()
    assert list(tmp_path.iterdir()) == []


HOSTILE = {
    "snapshot without weights": ("org/partial", "lacks its weights"),
    "dangling link": ("org/dangling", "has dangling links (model.safetensors)"),
    "link out of the cache": ("org/escape", "leads outside"),
    "link loop": ("org/loop", "loop"),
    "modules.json nested 100,000 deep": ("org/deep", "nested too deeply"),
    "'..' in the id": ("org/..", "no such file or folder (nor a Hub id: '..' and '--' are not allowed"),
    "'..' in the revision": ("org/tiny@a..b", "not a valid git ref name"),
    "a revision that is no ref": ("org/tiny@not~valid", "characters git does not allow"),
    "an uncached revision": ("org/tiny@v9", "nothing is cached for it"),
    "a short commit": ("org/tiny@" + A[:7], "a commit is given in full"),
    "an absolute path disguised as an id": ("/org/tiny", "/org/tiny: no such file or folder"),
    "a relative path disguised as an id": ("../org/tiny", "../org/tiny: no such file or folder"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_hub_inputs_one_error_nothing_written(offline_cache, tmp_path, case):
    arg, expected = HOSTILE[case]
    before = tree_bytes(offline_cache)
    r = run_cli(["quantize", arg, "--bits", "8", "-o", tmp_path / "out"])
    assert expected in one_error(r)
    assert not (tmp_path / "out").exists() and not any(tmp_path.iterdir())
    assert tree_bytes(offline_cache) == before


def test_reading_the_cache_imports_no_huggingface_hub(offline_cache):
    code = ("import sys, embtool; d = embtool.inspect('org/tiny'); assert d['source']['commit'] == %r; "
            "print('huggingface_hub' in sys.modules)" % A)
    env = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    env.update(HF_HOME=str(offline_cache.parent), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------
# Downloads, from a fake Hub on 127.0.0.1
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo_files(tiny_models) -> dict[str, bytes]:
    """The tiny BERT as a Hub repository holds it: with a card, and beside it files embtool must never fetch."""
    files = folder_files(tiny_models["bert"])
    files["README.md"] = b"---\nlicense: apache-2.0\n---\n# tiny\n"
    files.update({"pytorch_model.bin": b"\x80\x04pickle", "rust_model.ot": b"x", "tf_model.h5": b"x",
                  "flax_model.msgpack": b"x", "onnx/model.onnx": b"x", "2_Dense/pytorch_model.bin": b"x"})
    return files


@pytest.fixture
def fake_hub(hf_env, tmp_path):
    h = FakeHub()
    hf_env.setenv("HF_HOME", str(tmp_path / "hf"))
    hf_env.setenv("HF_ENDPOINT", h.url)
    yield h
    h.stop()


def snapshot_files(tmp_path: Path, repo: str, commit: str) -> list[str]:
    snap = tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / commit
    return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())


def test_download_fetches_only_what_embtool_reads_and_then_works_offline(fake_hub, hf_env, tmp_path, repo_files, tiny_bert):
    fake_hub.repos["org/tiny"] = Repo(repo_files, A)
    r = run_cli(["embed", "org/tiny", "hello world"])
    assert r.exit_code == 0, r.stderr
    assert f"note: org/tiny: commit {A}, fetching model.safetensors" in r.stderr
    assert "%|" not in r.stderr  # no progress bar off a terminal
    got = np.array([json.loads(line)["embedding"] for line in r.stdout.splitlines()])
    want = np.array([json.loads(line)["embedding"] for line in run_cli(["embed", tiny_bert, "hello world"]).stdout.splitlines()])
    assert np.array_equal(got, want)
    assert snapshot_files(tmp_path, "org/tiny", A) == ["1_Pooling/config.json", "README.md", "config.json", "model.safetensors",
                                                       "modules.json", "tokenizer.json"]
    r = run_cli(["quantize", "org/tiny", "--bits", "8", "-o", tmp_path / "q", "--quiet", "--no-eval"])
    assert r.exit_code == 0, r.stderr
    card = (tmp_path / "q" / "README.md").read_text()
    assert "base_model: org/tiny" in card and "license: apache-2.0" in card  # the licence, from the downloaded card
    fetched = " ".join(fake_hub.requests())
    for never in ("pytorch_model.bin", "rust_model.ot", "tf_model.h5", "flax_model.msgpack", "onnx/model.onnx"):
        assert never not in fetched
    fake_hub.log.clear()
    r = run_cli(["inspect", "org/tiny", "--json"])  # the cache now answers alone: the snapshot and .no_exist
    assert r.exit_code == 0 and json.loads(r.stdout)["source"]["commit"] == A
    assert fake_hub.requests() == []
    hf_env.setenv("HF_HUB_OFFLINE", "1")  # and with the network forbidden
    assert run_cli(["inspect", "org/tiny"]).exit_code == 0


def test_gated_model_needs_the_token_and_the_token_is_never_shown_nor_written(fake_hub, hf_env, tmp_path, repo_files):
    fake_hub.repos["org/gated"] = Repo(repo_files, A, gated=True)
    line = one_error(run_cli(["quantize", "org/gated", "--bits", "8", "-o", tmp_path / "q"]))
    assert "org/gated is gated" in line and "HF_TOKEN" in line
    wrong = "hf_wrong_token_value_0123"
    hf_env.setenv("HF_TOKEN", wrong)
    r = run_cli(["quantize", "org/gated", "--bits", "8", "-o", tmp_path / "q"])
    assert "org/gated is gated" in one_error(r) and wrong not in r.stdout + r.stderr
    assert not (tmp_path / "q").exists()
    hf_env.delenv("HF_TOKEN")
    # the right token, in a real process: everything it prints, logs and writes is searched for the token
    env = dict(os.environ, HF_TOKEN=fake_hub.token)
    env.pop("EMBTOOL_DEBUG", None)
    out = subprocess.run([sys.executable, "-m", "embtool", "quantize", "org/gated", "--bits", "8", "--no-eval",
                          "-o", str(tmp_path / "q"), "--json"], capture_output=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    assert any(h.get("authorization") == f"Bearer {fake_hub.token}" for _, _, h in fake_hub.log)  # sent to the Hub
    secret = fake_hub.token.encode()
    assert secret not in out.stdout + out.stderr
    for p in [*(tmp_path / "q").rglob("*"), *(tmp_path / "hf").rglob("*")]:
        if p.is_file():
            assert secret not in p.read_bytes(), p


def test_a_repository_with_only_pickle_weights_is_refused_after_its_configs(fake_hub, tmp_path, repo_files):
    files = {k: v for k, v in repo_files.items() if k in ("config.json", "tokenizer.json", "pytorch_model.bin")}
    fake_hub.repos["org/pt"] = Repo(files, A)
    line = one_error(run_cli(["quantize", "org/pt", "--bits", "8", "-o", tmp_path / "q"]))
    assert "org/pt has only pickle-based weights (pytorch_model.bin)" in line
    assert snapshot_files(tmp_path, "org/pt", A) == ["config.json", "tokenizer.json"]
    assert not any("pytorch_model.bin" in p for p in fake_hub.requests())
    assert not (tmp_path / "q").exists()


def test_a_download_cut_in_the_middle_is_resumed(fake_hub, tmp_path, repo_files, monkeypatch):
    """huggingface_hub >= 1 resumes a cut connection within the run (a Range request); 0.x keeps the partial file
    and the next run resumes it: either way the second request starts where the first stopped."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # so the cut falls after whole chunks
    fake_hub.repos["org/tiny"] = Repo(repo_files, A, cut_once={"model.safetensors"})
    r = run_cli(["inspect", "org/tiny", "--json"])
    if r.exit_code != 0:
        assert "org/tiny" in one_error(r)
        r = run_cli(["inspect", "org/tiny", "--json"])
    assert r.exit_code == 0, r.stderr
    ranges = [h.get("range") for m, p, h in fake_hub.log if p.endswith("/model.safetensors") and m == "GET"]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0
    blob = tmp_path / "hf" / "hub" / "models--org--tiny" / "snapshots" / A / "model.safetensors"
    assert hashlib.sha256(blob.read_bytes()).digest() == hashlib.sha256(repo_files["model.safetensors"]).digest()


def test_an_interrupted_run_is_resumed_by_the_next_one(fake_hub, tmp_path, repo_files):
    fake_hub.repos["org/tiny"] = Repo(repo_files, A, fail={"model.safetensors"})
    line = one_error(run_cli(["inspect", "org/tiny"]))
    assert "org/tiny" in line and "500" in line
    fake_hub.repos["org/tiny"].fail.clear()
    fake_hub.log.clear()
    r = run_cli(["inspect", "org/tiny"])
    assert r.exit_code == 0, r.stderr
    assert [p.rsplit("/", 1)[-1] for p in fake_hub.requests()] == ["main", "model.safetensors", "model.safetensors"]


def test_a_download_whose_size_disagrees_with_the_announced_one_is_refused(fake_hub, tmp_path, repo_files):
    size = len(repo_files["model.safetensors"])
    fake_hub.repos["org/tiny"] = Repo(repo_files, A, announce={"model.safetensors": size + 10})
    line = one_error(run_cli(["quantize", "org/tiny", "--bits", "8", "-o", tmp_path / "q"]))
    assert "did not have the size the Hub announced" in line
    assert "model.safetensors" not in snapshot_files(tmp_path, "org/tiny", A)
    blob = tmp_path / "hf" / "hub" / "models--org--tiny" / "blobs" / etag("model.safetensors", repo_files["model.safetensors"])
    assert not blob.exists() and not (tmp_path / "q").exists()


def test_a_repository_naming_a_pickle_as_a_shard_is_refused_before_fetching_it(fake_hub, tmp_path, repo_files):
    files = {k: v for k, v in repo_files.items() if k != "model.safetensors"}
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {"a": "pytorch_model-00001.bin"}}).encode()
    files["pytorch_model-00001.bin"] = b"\x80\x04pickle"
    fake_hub.repos["org/evil"] = Repo(files, A)
    assert "pytorch_model-00001.bin is pickle-based" in one_error(run_cli(["inspect", "org/evil"]))
    assert not any(".bin" in p for p in fake_hub.requests())


def test_downloaded_weights_pass_the_local_checks(fake_hub, tmp_path, repo_files):
    """A safetensors file whose header claims more data than it holds is downloaded, then refused when opened."""
    data = bytearray(repo_files["model.safetensors"])
    files = dict(repo_files, **{"model.safetensors": bytes(data[: len(data) - 64])})
    fake_hub.repos["org/liar"] = Repo(files, A)
    line = one_error(run_cli(["quantize", "org/liar", "--bits", "8", "-o", tmp_path / "q"]))
    assert "model.safetensors" in line
    assert not (tmp_path / "q").exists()


def test_an_incomplete_snapshot_gets_only_its_missing_files(fake_hub, tmp_path, repo_files):
    cache_repo(tmp_path / "hf" / "hub", "org/tiny", A, {k: v for k, v in repo_files.items()
                                                        if k in ("config.json", "tokenizer.json", "modules.json")})
    fake_hub.repos["org/tiny"] = Repo(repo_files, A)
    r = run_cli(["inspect", "org/tiny"])
    assert r.exit_code == 0, r.stderr
    got = {p.rsplit("/", 1)[-1] for p in fake_hub.requests("GET")}
    assert got == {"main", "README.md", "config.json", "model.safetensors"}  # 1_Pooling/config.json, README, weights


def test_a_dangling_link_is_fetched_again_when_the_network_is_allowed(fake_hub, tmp_path, repo_files):
    wanted = {k: v for k, v in repo_files.items() if k in ("config.json", "tokenizer.json", "model.safetensors")}
    cache_repo(tmp_path / "hf" / "hub", "org/tiny", A, wanted)
    blob = tmp_path / "hf" / "hub" / "models--org--tiny" / "blobs" / etag("model.safetensors", wanted["model.safetensors"])
    blob.unlink()
    fake_hub.repos["org/tiny"] = Repo(repo_files, A)
    r = run_cli(["inspect", "org/tiny"])
    assert r.exit_code == 0, r.stderr
    assert blob.read_bytes() == wanted["model.safetensors"]


@pytest.mark.parametrize("arg, expected", [("org/nope", "org/nope: no such model on the Hub"),
                                           ("org/tiny@v7", "the Hub has no revision 'v7'")])
def test_hub_refusals(fake_hub, tmp_path, repo_files, arg, expected):
    fake_hub.repos["org/tiny"] = Repo(repo_files, A)
    assert expected in one_error(run_cli(["inspect", arg]))


def test_onnx_repositories(fake_hub, tmp_path, tiny_bert):
    """An optimum-style repository (onnx/model.onnx + its external data), and one with several ONNX files."""
    files = folder_files(onnx_with_external_data(tiny_bert, tmp_path / "src"))
    fake_hub.repos["org/onnx"] = Repo(files, A)
    r = run_cli(["inspect", "org/onnx", "--json"])
    assert r.exit_code == 0, r.stderr
    assert snapshot_files(tmp_path, "org/onnx", A) == ["1_Pooling/config.json", "README.md", "config.json", "modules.json",
                                                       "onnx/model.onnx", "onnx/model.onnx_data", "tokenizer.json"]
    # safetensors of an architecture embtool cannot build beside an ONNX export: the ONNX model is fetched, as in a folder
    unbuildable = dict(files, **{"model.safetensors": (tiny_bert / "model.safetensors").read_bytes(),
                                 "config.json": json.dumps({**json.loads(files["config.json"]), "model_type": "t5"}).encode()})
    fake_hub.repos["org/t5ish"] = Repo(unbuildable, A)
    r = run_cli(["inspect", "org/t5ish", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "onnx" and not any(p.endswith("model.safetensors") for p in fake_hub.requests())
    several = {k: v for k, v in files.items() if not k.startswith("onnx/")}
    several.update({"onnx/a.onnx": files["onnx/model.onnx"], "onnx/b.onnx": b"never fetched",
                    "onnx/model.onnx_data": files["onnx/model.onnx_data"]})
    fake_hub.repos["org/several"] = Repo(several, B)
    assert "several ONNX files" in one_error(run_cli(["inspect", "org/several"]))
    r = run_cli(["inspect", "org/several", "--onnx-file", "a.onnx"])
    assert r.exit_code == 0, r.stderr
    assert not any(p.endswith("b.onnx") for p in fake_hub.requests())


def test_without_huggingface_hub_the_error_names_the_extra(fake_hub, tmp_path, monkeypatch, repo_files):
    fake_hub.repos["org/tiny"] = Repo(repo_files, A)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    line = one_error(run_cli(["inspect", "org/tiny"]))
    assert "pip install 'embtool[hub]'" in line and "org/tiny" in line


def test_download_progress_bars_go_to_stderr_on_a_terminal_only(monkeypatch):
    class Tty:
        written = ""

        def isatty(self):
            return True

        def write(self, s):
            self.written += s
            return len(s)

        def flush(self):
            pass

    assert hub._bar_class()(total=1).disable  # pytest's stderr is no terminal
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = hub._bar_class()(total=10, desc="model.safetensors")
    bar.update(5)
    bar.refresh()
    assert not bar.disable and "model.safetensors" in tty.written
    bar.close()
    with hub.quiet_downloads():
        assert hub._bar_class()(total=1).disable


def test_quiet_reaches_the_download_bars(fake_hub, repo_files, monkeypatch):
    fake_hub.repos["org/a"] = Repo(repo_files, A)
    fake_hub.repos["org/b"] = Repo(repo_files, B)
    seen = []
    make = hub._bar_class
    monkeypatch.setattr(hub, "_bar_class", lambda: seen.append(hub._QUIET.get()) or make())
    assert run_cli(["embed", "org/a", "x", "--quiet"]).exit_code == 0
    assert seen and all(seen)
    seen.clear()
    assert run_cli(["embed", "org/b", "x"]).exit_code == 0
    assert seen and not any(seen)


def test_an_unreachable_hub(hf_env, tmp_path, repo_files):
    """No network (and HF_HUB_OFFLINE not set): one line saying so; a cached snapshot that has its weights but was
    never checked for the optional files (a cache filled by another tool) is used as it is, with a note."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hf_env.setenv("HF_HOME", str(tmp_path / "hf"))
    hf_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    line = one_error(run_cli(["inspect", "org/tiny"]))
    assert "org/tiny: not (completely) in the Hub cache" in line and "cannot be reached" in line
    cache_repo(tmp_path / "hf" / "hub", "org/tiny", A, {k: v for k, v in repo_files.items()
                                                        if k in ("config.json", "tokenizer.json", "model.safetensors")})
    r = run_cli(["inspect", "org/tiny", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["source"]["commit"] == A
    assert "cannot be reached (ConnectError): using the cached snapshot of org/tiny" in r.stderr
