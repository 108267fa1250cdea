"""Reference vectors from sentence-transformers (PyTorch), stored as test data.

Run once, in an environment that has torch and sentence-transformers (never embtool's own):

    python -m venv ~/.cache/embtool-peers-venv
    ~/.cache/embtool-peers-venv/bin/pip install torch==2.13.0 sentence-transformers
    ~/.cache/embtool-peers-venv/bin/python tools/make_reference_vectors.py

It writes tests/data/reference_vectors.json: for each model, the sentences and their embeddings.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentence_transformers import SentenceTransformer  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
import realmodels  # noqa: E402  (the real-model fetcher is test infrastructure: tests/realmodels.py)
from embtool.core.corpora import corpus_lines  # noqa: E402

SENTENCES = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Lists files in the current directory, sorted by name.",
           "Quantization stores weights in fewer bits."],
    "fr": ["Affiche la liste des fichiers du répertoire courant.", "Le renard brun saute par-dessus le chien paresseux."],
    "es": ["Muestra el contenido de un archivo en la salida estándar.", "El zorro marrón salta sobre el perro perezoso."],
    "pl": ["Wyświetla zawartość pliku na standardowym wyjściu.", "Szybki brązowy lis przeskakuje nad leniwym psem."],
}


def main() -> None:
    out = {"command": "python tools/make_reference_vectors.py (torch + sentence-transformers)", "models": {}}
    for name, folder, langs, prefix in (("minilm", realmodels.minilm(), ["en"], ""),
                                        ("e5-small", realmodels.e5_small(), ["en", "fr", "es", "pl"], "passage: "),
                                        ("mpnet", realmodels.mpnet(), ["en", "fr"], "")):
        st = SentenceTransformer(str(folder), device="cpu")
        texts = [t for lang in langs for t in SENTENCES[lang]]
        if name == "mpnet":  # real text of every length, up to past max_seq_length (384 tokens)
            texts += corpus_lines("en", "heldout", 0, 12) + [" ".join(corpus_lines("en", "heldout", 12, 40))]
        vecs = st.encode([prefix + t for t in texts], normalize_embeddings=False)
        out["models"][name] = {"prefix": prefix, "texts": texts, "vectors": [[round(float(x), 7) for x in v] for v in vecs]}
        import sentence_transformers, torch  # noqa: E401

        out["versions"] = {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__}
    (ROOT / "tests" / "data" / "reference_vectors.json").write_text(json.dumps(out, ensure_ascii=False))
    print("wrote tests/data/reference_vectors.json")


if __name__ == "__main__":
    main()
