"""Held-out text from another source for the benchmarks: prose paragraphs of Debian's own documentation.

    python tools/bench_texts.py                 # en, de, fr into .bench/texts/ (fetched once, then cached)
    python tools/bench_texts.py --langs en,de   # some languages only

The tests and the repository's corpora use Debian *manual pages*; these paragraphs come from two other works,
the Debian Administrator's Handbook (package debian-handbook, one HTML file per section) and the Debian Reference
(debian-reference-LANG, one HTML file per chapter), fetched with `apt-get download` at pinned versions (a version
the archive no longer serves is an error, never a silent change of text) and unpacked with `dpkg-deb -x`.

Per language: every paragraph (`<p>`, the handbook's `<div class="para">`) as one line of text (markup removed,
whitespace folded), kept when it is 40-1,500 characters, mostly letters (>= 70% of its non-space characters) and in
the language (more of its words are common words of the language than of English: the translations leave some
paragraphs in English), deduplicated. Then split by *document*: documents are shuffled with a fixed seed and given
to the held-out part until it has HELD paragraphs, the rest is the training part (TRAIN paragraphs, shuffled, what a
user would give `-c`); a held-out paragraph whose text also occurs in a training document is dropped, so no held-out
paragraph, nor its document, is in the training part. Files: .bench/texts/LANG-train.txt, LANG-held.txt and
manifest.json (package versions, sha256 of each .deb, documents and paragraphs per part). Never used by the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".bench" / "texts"
PACKAGES = {"debian-handbook": "11.20220922", "debian-reference-en": "2.100", "debian-reference-de": "2.100",
            "debian-reference-fr": "2.100"}
# language -> (package, path pattern of its HTML documents)
SOURCES = {
    "en": [("debian-handbook", "usr/share/doc/debian-handbook/html/en-US/*.html"),
           ("debian-reference-en", "usr/share/debian-reference/*.en.html")],
    "de": [("debian-handbook", "usr/share/doc/debian-handbook/html/de-DE/*.html"),
           ("debian-reference-de", "usr/share/debian-reference/*.de.html")],
    "fr": [("debian-handbook", "usr/share/doc/debian-handbook/html/fr-FR/*.html"),
           ("debian-reference-fr", "usr/share/debian-reference/*.fr.html")],
}
# the most common words of each language (a paragraph is of language L when more of its words are here than in
# English's list): enough to tell a translated paragraph from one left in English
COMMON = {
    "en": "the of and to a in is that for it with as on be this are by or can you not from which an at",
    "de": "der die das und ist in zu den von mit sich des auf für nicht ein eine als auch es an werden aus er "
          "dem sie kann wird oder bei sind wenn",
    "fr": "le la les de des du et est un une en que qui dans pour pas par sur au il ou ce se avec sont peut "
          "cette plus aux",
}
SEED = 20240531
TRAIN, HELD = 4000, 500
MIN_TRAIN = 3000  # French has about 3,300 paragraphs outside its held-out documents: all of them are used
MIN_CHARS, MAX_CHARS = 40, 1500


class _Paragraphs(html.parser.HTMLParser):
    """The text of each paragraph element, without the text of blocks nested in it (program listings, tables)."""

    SKIP = {"pre", "table", "script", "style", "div", "ul", "ol", "dl"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.depth = 0  # open paragraph elements
        self.skip = 0  # open skipped blocks inside a paragraph
        self.buf: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        is_para = tag == "p" or (tag == "div" and "para" in cls.split())
        if self.depth and not is_para and tag in self.SKIP:
            self.skip += 1
            self.stack.append("skip")
        elif is_para:
            if self.depth == 0:
                self.buf = []
            self.depth += 1
            self.stack.append("para")
        elif tag not in ("br", "img", "hr", "meta", "link", "input", "col"):
            self.stack.append("other")

    def handle_endtag(self, tag):
        if tag in ("br", "img", "hr", "meta", "link", "input", "col") or not self.stack:
            return
        kind = self.stack.pop()
        if kind == "skip":
            self.skip -= 1
        elif kind == "para":
            self.depth -= 1
            if self.depth == 0:
                self.out.append(" ".join("".join(self.buf).split()))

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.buf.append(data)


def paragraphs(path: Path) -> list[str]:
    p = _Paragraphs()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    p.close()
    return p.out


def _letters_share(t: str) -> float:
    chars = [c for c in t if not c.isspace()]
    return sum(c.isalpha() for c in chars) / max(len(chars), 1)


def _in_language(t: str, lang: str) -> bool:
    words = re.findall(r"\w+", t.lower())
    own = set(COMMON[lang].split())
    hits = sum(w in own for w in words)
    if lang == "en":
        return hits >= 2
    english = set(COMMON["en"].split()) - own
    return hits >= 2 and hits > sum(w in english for w in words)


def keep(t: str, lang: str) -> bool:
    return MIN_CHARS <= len(t) <= MAX_CHARS and _letters_share(t) >= 0.7 and _in_language(t, lang)


def fetch(folder: Path) -> dict[str, str]:
    """Download (apt-get download, pinned versions) and unpack every package into folder/root; returns
    {package: sha256 of its .deb}."""
    debs = folder / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    root = folder / "root"
    hashes = {}
    for name, version in PACKAGES.items():
        deb = debs / f"{name}_{version}_all.deb"
        if not deb.is_file():
            print(f"[bench-texts] apt-get download {name}={version}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(dir=debs) as tmp:
                r = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=tmp, capture_output=True, text=True)
                got = sorted(Path(tmp).glob("*.deb"))
                if r.returncode != 0 or not got:
                    sys.exit(f"bench_texts: apt-get download {name}={version} failed (the pinned version is gone? "
                             f"run apt-get update):\n{r.stderr.strip()}")
                got[0].rename(deb)
        hashes[name] = hashlib.sha256(deb.read_bytes()).hexdigest()
        stamp = root / f".{name}_{version}"
        if not stamp.is_file():
            root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            stamp.write_text(hashes[name])
    return hashes


def documents(root: Path, lang: str) -> dict[str, list[str]]:
    """{document (package:path): its kept paragraphs in order}."""
    docs = {}
    for pkg, pattern in SOURCES[lang]:
        for path in sorted(root.glob(pattern)):
            docs[f"{pkg}:{path.relative_to(root)}"] = [t for t in paragraphs(path) if keep(t, lang)]
    return {d: ps for d, ps in docs.items() if ps}


def split(docs: dict[str, list[str]], train: int = TRAIN, held: int = HELD, seed: int = SEED) -> tuple[list[str], list[str], dict]:
    """(training paragraphs, held-out paragraphs, counts): held-out documents drawn until `held` paragraphs."""
    rng = random.Random(seed)
    first_doc: dict[str, str] = {}
    for d, ps in docs.items():
        for t in ps:
            first_doc.setdefault(t, d)
    names = sorted(docs)
    rng.shuffle(names)
    held_docs, n = [], 0
    for d in names:
        if n >= held:
            break
        held_docs.append(d)
        n += len(set(docs[d]))
    hset = set(held_docs)
    train_texts = {t for d in names if d not in hset for t in docs[d]}
    held_texts = {t for d in held_docs for t in docs[d]} - train_texts
    tr = sorted(train_texts)
    he = sorted(held_texts)
    rng.shuffle(tr)
    rng.shuffle(he)
    info = {"documents": len(docs), "held_documents": len(held_docs), "train_available": len(tr), "held_available": len(he)}
    return tr[:train], he[:held], info


def build(langs: list[str], out: Path = OUT) -> dict:
    hashes = fetch(out / "cache")
    old = out / "manifest.json"
    manifest = {"packages": {n: {"version": v, "sha256": hashes[n]} for n, v in PACKAGES.items()}, "seed": SEED,
                "languages": json.loads(old.read_text()).get("languages", {}) if old.is_file() else {}}
    for lang in langs:
        tr, he, info = split(documents(out / "cache" / "root", lang))
        if len(tr) < MIN_TRAIN or len(he) < 400:
            sys.exit(f"bench_texts: {lang}: only {len(tr)} training and {len(he)} held-out paragraphs")
        for part, lines in (("train", tr), ("held", he)):
            (out / f"{lang}-{part}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        manifest["languages"][lang] = {**info, "train": len(tr), "held": len(he)}
        print(f"[bench-texts] {lang}: {info['documents']} documents, {len(tr)} training paragraphs, {len(he)} held-out "
              f"paragraphs from {info['held_documents']} other documents -> {out}/{lang}-{{train,held}}.txt", file=sys.stderr)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def texts(lang: str) -> tuple[Path, Path]:
    """(training file, held-out file) of `lang`, built on first use."""
    tr, he = OUT / f"{lang}-train.txt", OUT / f"{lang}-held.txt"
    if not (tr.is_file() and he.is_file()):
        build([lang])
    return tr, he


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--langs", default=",".join(SOURCES), help="comma-separated: " + ", ".join(SOURCES))
    a = ap.parse_args()
    langs = [x for x in a.langs.split(",") if x]
    bad = [x for x in langs if x not in SOURCES]
    if bad:
        ap.error(f"unknown language(s) {bad}; known: {', '.join(SOURCES)}")
    build(langs)


if __name__ == "__main__":
    main()
