"""Calibration text: the user's file (--calib), or built-in samples when none is given.

Two built-in samples: `CALIB_SENTENCES`, 26 short sentences in 10 languages (cheap forward passes for the
mixed-precision sensitivity probes), and `builtin_sample()`, paragraphs from the training splits of the
repo's corpora (English, French, Spanish, Polish) for methods that need the statistics of real text (GPTQ's
input Gram matrices). Held-out splits are never used here: they are what fidelity is measured on.
"""

from __future__ import annotations

from embtool.core.corpora import LANGS, corpus_lines
from embtool.core.errors import InputError
from embtool.core.texts import read_lines

CALIB_SENTENCES = [
    "The committee will publish its final report on renewable energy next month.",
    "Use the --force option to overwrite an existing file without asking.",
    "She bought fresh bread, cheese and a bottle of wine at the market.",
    "How many kilometres is it from the station to the old harbour?",
    "The patient was advised to rest and drink plenty of water.",
    "Les résultats de l'enquête seront présentés lors de la prochaine réunion.",
    "Cette commande affiche la liste des processus en cours d'exécution.",
    "Il pleuvait depuis trois jours et la rivière commençait à déborder.",
    "Los estudiantes deben entregar el trabajo antes del viernes.",
    "El archivo de configuración se encuentra en el directorio principal.",
    "Mañana visitaremos el museo de arte moderno con mis abuelos.",
    "Program wyświetla pomoc i kończy działanie.",
    "W sobotę pojedziemy nad jezioro, jeśli będzie ładna pogoda.",
    "Die neue Brücke verbindet die beiden Stadtteile seit letztem Jahr.",
    "Bitte geben Sie Ihr Passwort erneut ein, um fortzufahren.",
    "Il treno per Milano parte alle otto e mezza dal binario due.",
    "O relatório anual mostra um crescimento das vendas no segundo semestre.",
    "De gemeente heeft besloten het park opnieuw in te richten.",
    "Machine learning models map sentences to vectors that capture meaning.",
    "Error: the input file contains invalid UTF-8 at line 12.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Researchers measured the temperature every hour for two weeks.",
    "Quel est le meilleur moyen de conserver les légumes frais ?",
    "¿Cuál es la diferencia entre un virus y una bacteria?",
    "Jak długo trwa lot z Warszawy do Lizbony?",
    "The function returns the number of bytes written, or -1 on error.",
    "Nach dem Konzert gingen wir noch in ein kleines Restaurant.",
    "La biblioteca municipal abre de lunes a sábado por la mañana.",
    "Le logiciel est distribué sous licence libre.",
    "Prices of houses in the city centre have doubled in ten years.",
    "Kliknij przycisk, aby zapisać zmiany w dokumencie.",
    "This manual page documents the GNU version of the command.",
]

BUILTIN_PER_LANG = 24  # 96 paragraphs in all: ~9k tokens, enough for a well-conditioned XᵀX of a 384-wide layer


def builtin_sample(per_lang: int = BUILTIN_PER_LANG) -> list[str]:
    """The first `per_lang` paragraphs of each built-in corpus' training split, languages interleaved."""
    parts = [corpus_lines(lang, "train", 0, per_lang) for lang in LANGS]
    return [t for group in zip(*parts) for t in group if t.strip()]


def calibration_texts(path: str | None, limit: int = 32, builtin: str = "sentences") -> list[str]:
    """Up to `limit` non-empty lines of `path`; without a file the built-in sample `builtin`
    ("sentences": CALIB_SENTENCES, "corpus": `builtin_sample()`)."""
    if path is None:
        return list(CALIB_SENTENCES) if builtin == "sentences" else builtin_sample()
    texts = [t for t in read_lines(path, limit) if t.strip()]
    if not texts:
        raise InputError(f"{path}: the calibration file is empty")
    return texts
