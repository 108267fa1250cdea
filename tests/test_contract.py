"""The pipeline contract (issue 21): what --force may replace, gates CI can read, one JSON schema,
quiet pipes, exit codes by kind, reproducible bytes and provenance, no surprising side effects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli


# ----------------------------------------------------------------------------------------------
# 1. --force replaces only what embtool wrote
# ----------------------------------------------------------------------------------------------

def _export(model, out, *flags):
    return run_cli(["export-onnx", model, "-o", out, "--quiet", *flags])


def test_force_refuses_a_folder_embtool_did_not_write(tmp_path, tiny_bert):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("important\n")
    for cmd in (["quantize", tiny_bert, "--bits", "8"], ["export-onnx", tiny_bert]):
        r = run_cli([*cmd, "-o", proj, "--force", "--quiet"])
        assert r.exit_code == 1, r.output
        assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1
        assert "has no embtool.json" in r.stderr and "--force only replaces what embtool wrote" in r.stderr
        assert (proj / "notes.txt").read_text() == "important\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"]  # no temporary left behind
    # without --force the message does not suggest --force
    r = _export(tiny_bert, proj)
    assert r.exit_code == 1 and "use --force" not in r.stderr and (proj / "notes.txt").is_file()


def test_force_replaces_an_embtool_output_only_while_it_holds_only_embtool_files(tmp_path, tiny_bert):
    out = tmp_path / "out"
    assert _export(tiny_bert, out).exit_code == 0
    listed = json.loads((out / "embtool.json").read_text())["files"]
    assert set(listed) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"embtool.json"}
    r = _export(tiny_bert, out)
    assert r.exit_code == 1 and "already exists (use --force" in r.stderr
    assert _export(tiny_bert, out, "--force").exit_code == 0
    # a file the user added: refused, kept
    (out / "notes.txt").write_text("my notes")
    r = _export(tiny_bert, out, "--force")
    assert r.exit_code == 1 and "holds notes.txt, which embtool did not write" in r.stderr
    assert (out / "notes.txt").read_text() == "my notes"
    (out / "notes.txt").unlink()
    # a file the user edited: refused, whether its size changed or not (the manifest holds a sha256 of each file)
    config = (out / "config.json").read_text()
    assert '"gelu"' in config
    for edited in (config + " ", config.replace('"gelu"', '"relu"')):
        (out / "config.json").write_text(edited)
        r = _export(tiny_bert, out, "--force")
        assert r.exit_code == 1 and "config.json changed since embtool wrote it" in r.stderr, r.stderr
        assert (out / "config.json").read_text() == edited
    # the model card is a file embtool wrote like any other: edited, it is kept too
    (out / "config.json").write_text(config)
    card = (out / "README.md").read_text()
    (out / "README.md").write_text(card.replace("embtool", "EMBTOOL", 1))
    r = _export(tiny_bert, out, "--force")
    assert r.exit_code == 1 and "README.md changed since embtool wrote it" in r.stderr
    (out / "README.md").write_text(card)
    # an output of an older embtool, whose manifest lists sizes only: refused, saying why and what to do
    doc = json.loads((out / "embtool.json").read_text())
    (out / "embtool.json").write_text(json.dumps({**doc, "files": {k: v["size"] for k, v in doc["files"].items()}}))
    r = _export(tiny_bert, out, "--force")
    assert r.exit_code == 1 and "lists file sizes only" in r.stderr and "remove the folder yourself" in r.stderr
    assert (out / "config.json").read_text() == config
    # an embtool.json written by someone else (no file list): refused
    (out / "config.json").write_text("{}")
    (out / "embtool.json").write_text('{"command": "x"}')
    r = _export(tiny_bert, out, "--force")
    assert r.exit_code == 1 and "no file list" in r.stderr
    # an empty folder holds nothing to lose: replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _export(tiny_bert, empty, "--force").exit_code == 0 and (empty / "model.onnx").is_file()


def test_force_never_removes_cwd_input_or_its_parents(tmp_path, tiny_bert, monkeypatch):
    m = tmp_path / "models" / "m"
    shutil.copytree(tiny_bert, m)
    monkeypatch.chdir(tmp_path / "models")
    for target in (".", "..", str(tmp_path / "models"), str(m), "m/"):
        r = _export(m, target, "--force")
        assert r.exit_code == 1, (target, r.output)
        assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1
        assert "Device or resource busy" not in r.stderr
    r = _export(m, ".", "--force")
    assert "current folder" in r.stderr
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("important")
    monkeypatch.chdir(work)
    for target in (".", "./", str(work), ".."):
        r = _export(m, target, "--force")
        assert r.exit_code == 1 and "current folder or one of its parents" in r.stderr, r.output
    assert (work / "notes.txt").read_text() == "important"
    assert sorted(p.name for p in m.iterdir()) == sorted(p.name for p in tiny_bert.iterdir())


def test_force_refuses_a_file_or_a_link_where_a_folder_goes(tmp_path, tiny_bert):
    f = tmp_path / "out"
    f.write_text("data")
    r = _export(tiny_bert, f, "--force")
    assert r.exit_code == 1 and "is a file" in r.stderr and f.read_text() == "data"
    good = tmp_path / "good"
    assert _export(tiny_bert, good).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(good)
    r = _export(tiny_bert, link, "--force")
    assert r.exit_code == 1 and "symbolic link" in r.stderr and (good / "embtool.json").is_file()


@pytest.mark.parametrize("ext", ["npy", "safetensors", "jsonl", "vec"])
def test_embed_force_replaces_only_an_embeddings_file(tmp_path, tiny_bert, ext):
    out = tmp_path / f"e.{ext}"
    args = ["embed", tiny_bert, "alpha", "beta", "-o", out, "--quiet"]
    assert run_cli(args).exit_code == 0
    first = out.read_bytes()
    r = run_cli(args)
    assert r.exit_code == 1 and "already exists (use --force" in r.stderr
    assert run_cli([*args, "--force"]).exit_code == 0 and out.read_bytes() == first
    other = {"npy": b"not a matrix", "safetensors": b"\x08\0\0\0\0\0\0\0{}      ",
             "jsonl": b'{"name": "my data"}\n', "vec": b"my notes\n"}[ext]
    out.write_bytes(other)
    r = run_cli([*args, "--force"])
    assert r.exit_code == 1 and "--force only replaces what embtool wrote" in r.stderr, r.output
    assert out.read_bytes() == other
    out.write_bytes(b"")  # an empty file holds nothing to lose
    assert run_cli([*args, "--force"]).exit_code == 0 and out.read_bytes() == first


def test_embed_force_refuses_a_safetensors_model(tmp_path, tiny_bert):
    out = tmp_path / "model.safetensors"
    shutil.copyfile(tiny_bert / "model.safetensors", out)
    r = run_cli(["embed", tiny_bert, "alpha", "-o", out, "--force", "--quiet"])
    assert r.exit_code == 1 and "not an embtool embeddings index" in r.stderr
    assert out.read_bytes() == (tiny_bert / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------------------------
# 2. gates CI can read
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def corpus_files(tmp_path):
    from conftest import corpus_lines

    c, h = tmp_path / "c.txt", tmp_path / "h.txt"
    c.write_text("\n".join(corpus_lines("en", 100)) + "\n")
    h.write_text("\n".join(corpus_lines("en", 40, 600)) + "\n")
    return c, h


def _trim(model, c, h, out, *gates):
    return run_cli(["trim-vocab", model, "-c", c, "--top", "30", "--eval", h, "-o", out, "--json", *gates])


def test_failed_gate_prints_the_summary_and_exits_3(tmp_path, tiny_bert, corpus_files):
    c, h = corpus_files
    out = tmp_path / "out"
    r = _trim(tiny_bert, c, h, out)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    ev = s["eval"]
    assert s["passed"] is True and s["written"] is True and out.is_dir() and ev["cosine_min"] < ev["cosine_mean"]
    shutil.rmtree(out)
    # the mean passes, the minimum over texts does not
    low, high = ev["cosine_min"], ev["cosine_mean"]
    mid = round((low + high) / 2, 4)
    assert low < mid < high < 0.999
    for gates, failing in ((["--min-cosine", str(mid - 0.1), "--min-cosine-min", str(mid)], ["min_cosine_min"]),
                           (["--min-cosine", str(round(high + 0.0005, 4))], ["min_cosine"]),
                           (["--min-recall", "1.0"], ["min_recall"])):
        if failing == ["min_recall"] and ev["recall_at_10"] == 1.0:
            continue
        r = _trim(tiny_bert, c, h, out, *gates)
        assert r.exit_code == 3, (gates, r.output)
        s = json.loads(r.stdout)  # the full summary, on stdout, with the measured figures
        assert s["passed"] is False and s["written"] is False and not out.exists()
        assert s["eval"]["cosine_mean"] == pytest.approx(high, abs=1e-4)
        assert [f.split(" is below --")[1].split()[0].replace("-", "_") for f in s["gate"]["failed"]] == failing
        assert s["vocab_after"] > 0 and s["bytes_after"] > 0
        assert r.stderr.startswith("Error: held-out") and r.stderr.count("\n") == 1 and "nothing written" in r.stderr
    # without --json: the human summary, then the reason; exit 3
    r = run_cli(["trim-vocab", tiny_bert, "-c", c, "--top", "30", "--eval", h, "-o", out, "--min-cosine-min", str(mid)])
    assert r.exit_code == 3 and r.stdout == "" and "cosine" in r.stderr and r.stderr.splitlines()[-1].startswith("Error: ")
    r = _trim(tiny_bert, c, h, out, "--min-cosine", str(mid - 0.1), "--min-cosine-min", str(low - 0.01),
              "--min-recall", "0")
    g = json.loads(r.stdout)["gate"]
    assert r.exit_code == 0 and g["failed"] == [] and g["min_recall"] == 0.0
    # the thresholds as given, to the 6 significant digits every --json float carries
    assert g["min_cosine"] == pytest.approx(mid - 0.1, rel=1e-6) and g["min_cosine_min"] == pytest.approx(low - 0.01, rel=1e-6)


@pytest.mark.parametrize("cmd", [["factorize", "--rank", "2"], ["quantize", "--bits", "2"]])
def test_gate_exit_3_on_every_gated_command(tmp_path, tiny_bert, corpus_files, cmd):
    _, h = corpus_files
    r = run_cli([cmd[0], tiny_bert, *cmd[1:], "--eval", h, "--min-cosine", "0.99999", "--min-recall", "1",
                 "-o", tmp_path / "o", "--json"])
    assert r.exit_code == 3, r.output
    s = json.loads(r.stdout)
    assert s["passed"] is False and not (tmp_path / "o").exists() and "min_cosine" in s["gate"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "h.txt"]


def test_every_gated_command_has_the_three_gates_and_says_which_statistic(tiny_bert):
    from embtool.cli.main import cli

    gated = [name for name, c in cli.commands.items() if any(p.name == "min_cosine" for p in c.params)]
    assert sorted(gated) == ["defactorize", "dequantize", "export-onnx", "factorize", "init-subwords", "quantize", "shrink",
                             "trim-vocab"]
    for name in gated:
        opts = {p.name: p for p in cli.commands[name].params}
        assert "mean over held-out texts" in opts["min_cosine"].help
        assert "minimum over held-out texts" in opts["min_cosine_min"].help
        assert "recall@10" in opts["min_recall"].help
        assert all("exit 3" in opts[o].help for o in ("min_cosine", "min_cosine_min", "min_recall"))
        if name == "shrink":  # always measured on its held-out lines: it has no --no-eval
            assert "no_eval" not in opts
            continue
        extra = ["--tokenizer", tiny_bert / "tokenizer.json"] if name == "init-subwords" else []
        r = run_cli([name, tiny_bert, *extra, "--min-recall", "0.5", "--no-eval", "-o", "x"])  # the gates need a check
        assert r.exit_code == 2 and "--min-recall needs the fidelity check" in r.stderr


# ----------------------------------------------------------------------------------------------
# 3. one JSON schema
# ----------------------------------------------------------------------------------------------

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schema"
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(x, schema, root=None, where="$") -> list[str]:
    """The subset of JSON Schema docs/schema uses: boolean schemas, $ref (#/$defs/...), const, enum, type,
    required, properties, additionalProperties, items, minimum, maximum. Returns the violations."""
    root = schema if root is None else root
    if schema is True:
        return []
    if schema is False:
        return [f"{where}: not allowed"]
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return validate(x, node, root, where)
    errs = []
    if "const" in schema and x != schema["const"]:
        errs.append(f"{where}: {x!r} is not {schema['const']!r}")
    if "enum" in schema and x not in schema["enum"]:
        errs.append(f"{where}: {x!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]

        def is_a(t):
            if t == "integer":
                return isinstance(x, int) and not isinstance(x, bool)
            if t == "number":
                return isinstance(x, (int, float)) and not isinstance(x, bool)
            return isinstance(x, TYPES[t])

        if not any(is_a(t) for t in types):
            return errs + [f"{where}: {x!r} is not of type {types}"]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        if "minimum" in schema and x < schema["minimum"]:
            errs.append(f"{where}: {x} < {schema['minimum']}")
        if "maximum" in schema and x > schema["maximum"]:
            errs.append(f"{where}: {x} > {schema['maximum']}")
    if isinstance(x, dict):
        errs += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in x]
        props = schema.get("properties", {})
        for k, v in x.items():
            sub = props.get(k, schema.get("additionalProperties", True))
            errs += validate(v, sub, root, f"{where}.{k}")
    if isinstance(x, list) and "items" in schema:
        for i, v in enumerate(x):
            errs += validate(v, schema["items"], root, f"{where}[{i}]")
    return errs


def test_the_validator_can_fail():
    s = json.loads((SCHEMA_DIR / "factorize.json").read_text())
    assert validate({"schema": "embtool.factorize/1"}, s)  # required keys missing
    good = {"schema": "embtool.factorize/1", "model": "m", "output": "o", "written": True, "rank": 2,
            "embedding_parameters_before": 10, "embedding_parameters_after": 4, "bytes_before": 1, "bytes_after": 1,
            "eval": {"texts": 2, "cosine_mean": 0.5, "cosine_min": 0.1, "recall_at_10": 1.0}}
    assert validate(good, s) == []
    assert validate({**good, "params_before": 10}, s)  # a retired key
    assert validate({**good, "eval": {**good["eval"], "recall@10": 1.0}}, s)
    assert validate({**good, "rank": "2"}, s) and validate({**good, "written": 1}, s)
    assert validate({**good, "eval": {**good["eval"], "cosine_mean": 1.5}}, s)
    assert validate({**good, "schema": "embtool.quantize/1"}, s)


def _floats(x):
    if isinstance(x, float):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _floats(v)
    elif isinstance(x, list):
        for v in x:
            yield from _floats(v)


def test_every_command_json_matches_its_schema(tmp_path, tiny_bert, corpus_files):
    from embtool.cli.main import cli

    c, h = corpus_files
    t = tmp_path
    runs = {
        "inspect": [["inspect", tiny_bert, "--json"]],
        "export-onnx": [["export-onnx", tiny_bert, "-o", t / "onnx", "--json"]],
        "trim-vocab": [["trim-vocab", tiny_bert, "-c", c, "--top", "40", "-o", t / "trim", "--eval", h, "--json"],
                       ["trim-vocab", tiny_bert, "-c", c, "--dry-run", "--json"]],
        "quantize": [["quantize", tiny_bert, "--bits", "4", "-o", t / "q", "--eval", h, "--min-cosine", "0", "--json"]],
        "dequantize": [["dequantize", t / "q", "-o", t / "dq", "--json"]],
        "factorize": [["factorize", tiny_bert, "--rank", "4", "-o", t / "f", "--eval", h, "--json"]],
        "defactorize": [["defactorize", t / "f", "-o", t / "df", "--json"]],
        "init-subwords": [["init-subwords", tiny_bert, "--tokenizer", t / "trim" / "tokenizer.json", "-o", t / "sw",
                           "--eval", h, "--json"]],
        "embed": [["embed", tiny_bert, "-i", h, "-o", t / "e.safetensors", "--json"],
                  ["embed", tiny_bert, "-i", h, "-o", t / "e.parquet", "--json"]],
        "search": [["search", t / "e.safetensors", "a query", "another", "-k", "3", "--json"]],
        "shrink": [["shrink", tiny_bert, "-c", c, "--max-size", "100KB", "-o", t / "sh", "--json"]],
    }
    assert sorted(runs) == sorted(cli.commands)  # every command is covered
    assert sorted(p.stem for p in SCHEMA_DIR.glob("*.json")) == sorted(cli.commands)
    for command, arg_lists in runs.items():
        schema = json.loads((SCHEMA_DIR / f"{command}.json").read_text())
        assert schema["$id"] == f"embtool.{command}/1"
        for args in arg_lists:
            r = run_cli(args)
            assert r.exit_code == 0, (args, r.output)
            lines = r.stdout.splitlines()
            assert len(lines) == (6 if command == "search" else 1)  # search: JSON Lines, one object per hit
            for line in lines:
                doc = json.loads(line)
                assert doc["schema"] == f"embtool.{command}/1" and list(doc)[0] == "schema"
                assert validate(doc, schema) == [], (command, validate(doc, schema))
                assert all(float(f"{f:.6g}") == f for f in _floats(doc)), (command, list(_floats(doc)))
    r = run_cli(["search", "--help"])
    assert "JSON Lines on stdout: one JSON object per hit" in " ".join(r.stdout.split())


# ----------------------------------------------------------------------------------------------
# 4. quiet pipes and full disks
# ----------------------------------------------------------------------------------------------

import os  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EMBTOOL = f"{shlex.quote(sys.executable)} -m embtool"


def _bash(script: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a bash script where `embtool` is this checkout's CLI."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(["bash", "-c", f"embtool() {{ {EMBTOOL} \"$@\"; }}\n{script}"], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=300)


def test_a_closed_pipe_ends_quietly_like_unix_tools(tmp_path, tiny_bert):
    (tmp_path / "many.txt").write_text("".join(f"text number {i}\n" for i in range(1000)))  # > a pipe's 64 KB
    assert run_cli(["embed", tiny_bert, "-i", tmp_path / "many.txt", "-o", tmp_path / "i.safetensors", "--quiet"]).exit_code == 0
    for cmd in (f"embtool embed {tiny_bert} -i many.txt", "embtool search i.safetensors -q many.txt -k 5 --json",
                "yes"):  # the reference: what a Unix tool does
        r = _bash(f"{cmd} 2>err.txt | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}", tmp_path)
        assert r.stdout.strip() == "141", (cmd, r.stdout, r.stderr)  # 128 + SIGPIPE, as the shell reports `yes | head -1`
        assert (tmp_path / "err.txt").read_text() == "", cmd  # no "Error: Broken pipe", no traceback
    assert not list(tmp_path.glob(".embtool-tmp-*"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this platform")
@pytest.mark.parametrize("args", ["--version", "--help", "inspect {m}", "inspect {m} --json", "trim-vocab --help"])
def test_full_stdout_is_one_error_line(tmp_path, tiny_bert, args):
    r = _bash(f"embtool {args.format(m=tiny_bert)} >/dev/full", tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1 and "No space left on device" in r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


def test_dash_output_is_stdout_for_embed_and_refused_for_models(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli(["embed", tiny_bert, "one text", "another", "-o", "-"])
    assert r.exit_code == 0 and [json.loads(x)["text"] for x in r.stdout.splitlines()] == ["one text", "another"]
    assert r.stdout == run_cli(["embed", tiny_bert, "one text", "another"]).stdout
    for cmd in (["export-onnx", tiny_bert], ["quantize", tiny_bert, "--bits", "8"], ["factorize", tiny_bert, "--rank", "4"]):
        r = run_cli([*cmd, "-o", "-", "--quiet"])
        assert r.exit_code == 2 and "cannot go to stdout" in r.stderr and r.stderr.count("\n") == 1, r.output
    assert list(tmp_path.iterdir()) == []  # no file or folder named "-"


# ----------------------------------------------------------------------------------------------
# 5. exit codes by kind
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["MODEL", "-c", "-i", "-q", "--eval", "--calib", "--keep", "INDEX", "--tokenizer",
                                  "--word-vocab", "--query-embeddings", "--shard", "--source-tokenizer"])
def test_a_missing_input_file_is_an_error_not_a_usage_error(tmp_path, tiny_bert, what):
    gone = tmp_path / "missing.txt"
    (tmp_path / "c.txt").write_text("".join(f"hello world {i}\n" for i in range(12)))
    run_cli(["embed", tiny_bert, "-i", tmp_path / "c.txt", "-o", tmp_path / "i.safetensors", "--quiet"])
    m, c, idx, o = tiny_bert, tmp_path / "c.txt", tmp_path / "i.safetensors", tmp_path / "out"
    args = {
        "MODEL": ["inspect", gone],
        "-c": ["trim-vocab", m, "-c", gone, "-o", o],
        "-i": ["embed", m, "-i", gone],
        "-q": ["search", idx, "-q", gone],
        "--eval": ["trim-vocab", m, "-c", c, "--eval", gone, "-o", o],
        "--calib": ["quantize", m, "--bits", "2,4,8", "--target-bits", "4", "--calib", gone, "-o", o],
        "--keep": ["trim-vocab", m, "-c", c, "--keep", gone, "-o", o],
        "INDEX": ["search", gone, "a query"],
        "--tokenizer": ["init-subwords", m, "--tokenizer", gone, "-o", o],
        "--word-vocab": ["init-subwords", m, "--tokenizer", m, "--word-vectors", c, "--word-vocab", gone, "-o", o],
        "--query-embeddings": ["search", idx, "--query-embeddings", gone],
        "--shard": ["search", idx, "--shard", gone, "a query"],
        "--source-tokenizer": ["init-subwords", m, "--source-tokenizer", gone, "--tokenizer", m, "-o", o],
    }[what]
    r = run_cli(args)
    assert r.exit_code == 1, (what, r.output)
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1 and "Usage:" not in r.stderr, r.stderr
    assert "missing.txt" in r.stderr and not o.exists()


def test_usage_errors_exit_2(tmp_path, tiny_bert):
    for args, message in ((["trim-vocab", tiny_bert, "-o", tmp_path / "o"], "nothing to select by"),
                          (["quantize", tiny_bert, "--bits", "5", "-o", tmp_path / "o"], "Invalid value"),
                          (["embed", tiny_bert, "x", "--keep-float"], "--keep-float goes with"),
                          (["search"], "Missing argument")):
        r = run_cli(args)
        assert r.exit_code == 2 and message in r.stderr, (args, r.output)
    assert not (tmp_path / "o").exists()


def test_the_exit_code_table_is_documented():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Exit codes"):]
    table = table[:table.index("\n\n", table.index("| code |"))]
    help_text = run_cli(["--help"]).stdout
    man = (ROOT / "man" / "embtool.1").read_text()
    assert ".SH EXIT STATUS" in man
    for code in ("0", "1", "2", "3", "130", "143", "141"):
        assert f"| {code} " in table or f" {code} |" in table or f"/ {code} |" in table, code
        assert f"  {code} " in help_text or f" {code} terminated" in help_text, code
        assert f"  {code} " in man or f" {code} terminated" in man, code


# ----------------------------------------------------------------------------------------------
# 6. reproducible bytes and provenance
# ----------------------------------------------------------------------------------------------

def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_inputs_typed_differently_give_identical_bytes(tmp_path, tiny_bert, monkeypatch):
    shutil.copytree(tiny_bert, tmp_path / "m")
    (tmp_path / "c.txt").write_text("hello world\nthe quick brown fox\nvectors for sentences\n")
    monkeypatch.chdir(tmp_path)
    runs = {"a": ["m", "-c", "c.txt", "--threads", "1"],
            "b": ["./m/", "-c", str(tmp_path / "c.txt"), "--threads", "2"]}
    for out, (model, *rest) in runs.items():
        assert run_cli(["trim-vocab", model, *rest, "-o", f"trim-{out}", "--quiet"]).exit_code == 0
        assert run_cli(["quantize", model, "--bits", "4", "--threads", rest[-1], "-o", f"q-{out}", "--quiet"]).exit_code == 0
        assert run_cli(["export-onnx", model, "-o", f"x-{out}", "--quiet"]).exit_code == 0
        assert run_cli(["embed", model, "one", "two", "-o", f"e-{out}.safetensors", "--quiet"]).exit_code == 0
    for kind in ("trim", "q", "x"):
        a, b = _tree(tmp_path / f"{kind}-a"), _tree(tmp_path / f"{kind}-b")
        assert list(a) == list(b) and all(a[k] == b[k] for k in a), (kind, [k for k in a if a[k] != b.get(k)])
        prov = (tmp_path / f"{kind}-a" / "embtool.json").read_text()
        assert "threads" not in prov and str(tmp_path) not in prov
    assert (tmp_path / "e-a.safetensors").read_bytes() == (tmp_path / "e-b.safetensors").read_bytes()


def test_provenance_keeps_the_chain_and_inspect_shows_it(tmp_path, tiny_bert):
    (tmp_path / "c.txt").write_text("hello world\nthe quick brown fox\n")
    t, q, x = tmp_path / "t", tmp_path / "q", tmp_path / "x"
    assert run_cli(["trim-vocab", tiny_bert, "-c", tmp_path / "c.txt", "-o", t, "--quiet"]).exit_code == 0
    assert run_cli(["quantize", t, "--bits", "8", "-o", q, "--quiet"]).exit_code == 0
    assert run_cli(["export-onnx", q, "-o", x, "--quiet"]).exit_code == 0
    d = json.loads(run_cli(["inspect", x, "--json"]).stdout)
    assert [s["command"] for s in d["provenance"]] == ["trim-vocab", "quantize", "export-onnx"]
    assert d["provenance"][0]["arguments"]["corpus"][0]["file"] == "c.txt"
    assert d["provenance"][1]["arguments"]["bits"] == [8]
    # each step names its input by fingerprint: the model the step before wrote
    from embtool.core.model import open_model

    assert d["provenance"][0]["inputs"]["model"] == open_model(tiny_bert).fingerprint()
    assert d["provenance"][1]["inputs"]["model"] == open_model(t).fingerprint()
    assert "made by         trim-vocab -> quantize -> export-onnx" in run_cli(["inspect", x]).stdout
    assert json.loads(run_cli(["inspect", tiny_bert, "--json"]).stdout)["provenance"] == []


@pytest.mark.parametrize("portable", [False, True])
def test_inspect_reads_an_onnx_graph_without_config(tmp_path, tiny_bert, portable):
    x = tmp_path / "x"
    assert run_cli(["export-onnx", tiny_bert, "-o", x, "--quiet", *(["--portable"] if portable else [])]).exit_code == 0
    (x / "config.json").unlink()
    d = json.loads(run_cli(["inspect", x, "--json"]).stdout)
    assert (d["hidden_size"], d["layers"], d["embedding_rows"]) == (32, 2, 300), d
    assert "unknown" not in d["architecture"]
    assert "hidden 32  layers 2" in run_cli(["inspect", x]).stdout


@pytest.mark.real
@pytest.mark.parametrize("name,layers", [("minilm_int8_onnx", 6), ("paraphrase_onnx", 3)])
def test_inspect_reads_real_onnx_graphs(real, name, layers):
    d = json.loads(run_cli(["inspect", getattr(real, name)(), "--json"]).stdout)
    assert (d["hidden_size"], d["layers"], d["embedding_rows"]) == (384, layers, 30522), d


# ----------------------------------------------------------------------------------------------
# 7. side effects
# ----------------------------------------------------------------------------------------------

def test_no_telemetry_files_and_no_onnxruntime_noise(tmp_path, tiny_bert):
    home = tmp_path / "home"
    home.mkdir()
    for args in (["--version"], ["embed", tiny_bert, "a text"], ["inspect", tiny_bert]):
        r = _bash(" ".join(["embtool", *map(shlex.quote, map(str, args))]), tmp_path, {"HOME": str(home)})
        assert r.returncode == 0, r.stderr
        assert r.stderr == "" and list(home.rglob("*")) == [], (args, r.stderr, list(home.rglob("*")))
    # a HOME nobody can write to (not even root): onnxruntime would warn in colour that it cannot persist its id
    r = _bash(f"embtool embed {tiny_bert} 'a text' --quiet", tmp_path, {"HOME": "/proc/self/fdinfo"})
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_version_does_not_load_onnxruntime():
    code = ("import sys; sys.argv = ['embtool', '--version']\n"
            "from embtool.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('loaded' if 'onnxruntime' in sys.modules else 'not loaded')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.stdout.splitlines() == [r.stdout.splitlines()[0], "not loaded"] and "onnxruntime 1." in r.stdout, r.stdout


def test_threads_follow_omp_num_threads_unless_given(monkeypatch):
    from embtool.runtime import encoder

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert encoder.resolve_threads(0) == 3 and encoder.resolve_threads(2) == 2
    assert encoder.session_options(0).intra_op_num_threads == 3 and encoder._ORT_QUIET
    assert encoder.session_options(1).intra_op_num_threads == 1
    for bad in ("", "abc", "0", "-2"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert encoder.resolve_threads(0) == 0  # onnxruntime's default: all cores
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert encoder.session_options(0).intra_op_num_threads == 0


def test_man_pages_are_installed_with_the_package():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["data-files"]["share/man/man1"]
    shipped = {p for g in globs for p in ROOT.glob(g)}
    assert shipped == set((ROOT / "man").glob("*.1")) and len(shipped) >= 11


def test_compressed_corpora(tmp_path, tiny_bert):
    import gzip

    from conftest import corpus_lines

    text = "\n".join(corpus_lines("en", 200)) + "\n"
    (tmp_path / "c.txt").write_text(text)
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "gz-named.txt").write_bytes(gzip.compress(text.encode()))  # known by its magic bytes, not its name
    runs = {}
    for name in ("c.txt", "c.txt.gz", "gz-named.txt"):
        r = run_cli(["trim-vocab", tiny_bert, "-c", tmp_path / name, "--dry-run", "--json"])
        assert r.exit_code == 0, r.output
        s = json.loads(r.stdout)
        runs[name] = (s["vocab_after"], s["corpus_lines"])
    assert len(set(runs.values())) == 1 and runs["c.txt"][1] == 200
    r = run_cli(["embed", tiny_bert, "-i", "-"], input=gzip.compress(b"one\ntwo\n"))
    assert r.exit_code == 0 and [json.loads(x)["text"] for x in r.stdout.splitlines()] == ["one", "two"]
    (tmp_path / "z.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    r = run_cli(["trim-vocab", tiny_bert, "-c", tmp_path / "z.txt.zst", "--dry-run"])
    assert r.exit_code == 1 and "zstd-compressed: decompress it first" in r.stderr and r.stderr.count("\n") == 1
    (tmp_path / "bad.gz").write_bytes(gzip.compress(text.encode())[:300])
    r = run_cli(["trim-vocab", tiny_bert, "-c", tmp_path / "bad.gz", "--dry-run"])
    assert r.exit_code == 1 and "damaged gzip data" in r.stderr and r.stderr.count("\n") == 1, r.stderr


# ----------------------------------------------------------------------------------------------
# the README's Makefile and CI snippets, as written, on a passing and a failing gate
# ----------------------------------------------------------------------------------------------

import re  # noqa: E402


def _readme_block(lang: str, after: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"```{lang}\n", readme.index(after)) + len(lang) + 4
    return readme[start:readme.index("```\n", start)]


def _workspace(tmp_path: Path) -> Path:
    """A folder with bin/embtool (this checkout's CLI) to put first on PATH."""
    w = tmp_path / "w"
    (w / "bin").mkdir(parents=True)
    (w / "bin" / "embtool").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m embtool \"$@\"\n")
    (w / "bin" / "embtool").chmod(0o755)
    return w


def _gates(text: str, trim: str, quantize: str) -> str:
    """Set the snippet's thresholds: trim-vocab's to `trim`, quantize's to `quantize`."""
    out = []
    for line in text.splitlines(keepends=True):
        value = quantize if "quantize" in line or "--eval-prefix" in line else trim
        out.append(re.sub(r"(--min-cosine(?:-min)?) [0-9.]+", rf"\1 {value}", line))
    return "".join(out)


def _env(w: Path) -> dict:
    return {**os.environ, "PATH": f"{w / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


SLOW = pytest.mark.slow  # every combination runs in `make test`; one in `make test-fast`


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("gate,shell_flags", [("fail", "-ec"), pytest.param("fail", "-eo pipefail -c", marks=SLOW),
                                              pytest.param("pass", "-ec", marks=SLOW),
                                              pytest.param("pass", "-eo pipefail -c", marks=SLOW)])
def test_readme_makefile_snippet(tmp_path, tiny_bert, shell_flags, gate):
    from conftest import corpus_lines

    w = _workspace(tmp_path)
    make = _readme_block("make", "## Shrinking a model in a pipeline")
    assert "--min-cosine" in make and "$(MODEL)" in make
    shutil.copytree(tiny_bert, w / "tiny")
    (w / "train.txt").write_text("\n".join(corpus_lines("fr", 300)) + "\n")
    (w / "held.txt").write_text("\n".join(corpus_lines("fr", 30, 5000)) + "\n")
    (w / "docs.txt").write_text("un document\nun autre document\n")
    (w / "Makefile").write_text(_gates(make, "-1", "-1" if gate == "pass" else "0.99999"))
    r = subprocess.run(["make", "docs.safetensors", "MODEL=tiny", "CORPUS=train.txt", "HELDOUT=held.txt",
                        "SHELL=/bin/bash", f".SHELLFLAGS={shell_flags}"],
                       cwd=w, env=_env(w), capture_output=True, text=True, timeout=600)
    trim = json.loads((w / "trim.json").read_text())
    assert trim["passed"] is True and trim["written"] is True and (w / "e5-fr" / "embtool.json").is_file()
    q = json.loads((w / "quantize.json").read_text())
    assert q["schema"] == "embtool.quantize/1" and "cosine_mean" in q["eval"]
    if gate == "pass":
        assert r.returncode == 0, r.stderr
        assert q["passed"] is True and (w / "e5-fr-q" / "embtool.json").is_file() and (w / "docs.safetensors").is_file()
        r2 = subprocess.run(["make", "docs.safetensors", "MODEL=tiny", "CORPUS=train.txt", "HELDOUT=held.txt"],
                            cwd=w, env=_env(w), capture_output=True, text=True, timeout=600)
        assert r2.returncode == 0 and "up to date" in r2.stdout  # nothing to rebuild
    else:
        assert r.returncode == 2 and "Error 3" in r.stderr, (r.returncode, r.stderr)  # make reports the gate's exit 3
        assert q["passed"] is False and q["written"] is False and q["gate"]["failed"]
        assert not (w / "e5-fr-q").exists() and not (w / "docs.safetensors").exists()
        assert not list(w.glob(".embtool-tmp-*"))


def _ci_steps(yaml: str) -> list[dict]:
    """The steps of the README's workflow: [{'run': ..., 'if': ...}] (`uses:` steps dropped)."""
    steps, cur = [], None
    for line in yaml.splitlines():
        s = line.strip()
        if s.startswith("- "):
            cur = {}
            steps.append(cur)
            s = s[2:]
        if cur is None or ":" not in s:
            continue
        key, _, value = s.partition(":")
        if key in ("run", "if", "uses"):
            cur[key] = value.split("  #")[0].strip()
    return [st for st in steps if "run" in st and "uses" not in st]


@pytest.mark.skipif(shutil.which("jq") is None, reason="no jq")
@pytest.mark.parametrize("gate,shell", [("fail", ["bash", "-e"]), pytest.param("fail", ["bash", "-e", "-o", "pipefail"], marks=SLOW),
                                        pytest.param("pass", ["bash", "-e"], marks=SLOW),
                                        pytest.param("pass", ["bash", "-e", "-o", "pipefail"], marks=SLOW)])
def test_readme_ci_snippet(tmp_path, tiny_bert, shell, gate):
    """Runs the workflow's steps as GitHub Actions does: each in `shell`, stopping at the first failure
    except for `if: always()` steps."""
    from conftest import corpus_lines

    w = _workspace(tmp_path)
    steps = _ci_steps(_readme_block("yaml", "## Shrinking a model in a pipeline"))
    assert any("--min-cosine" in st["run"] for st in steps) and any(st.get("if") == "always()" for st in steps)
    shutil.copytree(tiny_bert, w / "model")
    (w / "data").mkdir()
    (w / "data" / "train.txt").write_text("\n".join(corpus_lines("en", 300)) + "\n")
    (w / "data" / "heldout.txt").write_text("\n".join(corpus_lines("en", 30, 5000)) + "\n")
    failed, codes, log = False, [], ""
    for st in steps:
        if st["run"].startswith("pip install"):
            continue
        if failed and st.get("if") != "always()":
            codes.append(None)  # skipped
            continue
        script = _gates(st["run"], "-1", "-1" if gate == "pass" else "0.99999")
        r = subprocess.run([*shell, "-c", script], cwd=w, env=_env(w), capture_output=True, text=True, timeout=600)
        codes.append(r.returncode)
        log += r.stdout
        failed = failed or r.returncode != 0
    q = json.loads((w / "q.json").read_text())
    assert json.loads((w / "trim.json").read_text())["passed"] is True
    if gate == "pass":
        assert codes == [0, 0, 0, 0] and q["passed"] is True and (w / "model-q4" / "embtool.json").is_file()
    else:
        assert codes == [0, 3, None, 0], codes  # the gate fails its step; the summaries are still shown
        assert q["passed"] is False and q["written"] is False and not (w / "model-q4").exists()
        assert '"passed": false' in log
