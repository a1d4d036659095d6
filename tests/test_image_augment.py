"""Random changes to training images (`data.augment`): what each one does to a batch, that a
seed repeats them, that only the training split is wrapped, and the recipe's one-line errors."""

import numpy as np
import pytest
import torch
from datasets import Dataset

from pakd_hf import RecipeError, load_recipe
from pakd_hf.pipeline.image_augment import AugmentedImages, augment_images
from pakd_hf.recipe import ImageAugment
from pakd_hf.pipeline.tasks import adapter_for


def _batch(n=6, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_a_seed_repeats_the_changes_and_another_seed_does_not():
    x, spec = _batch(), ImageAugment(shift=0.2, flip=0.5, erase=0.5)
    a, b, c = (augment_images(x, spec, _gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x) and torch.equal(x, _batch())  # the input itself is never changed


def test_flip_mirrors_left_right():
    x = _batch()
    assert torch.equal(augment_images(x, ImageAugment(flip=1.0), _gen(0)), x.flip(-1))
    # probability 0.5: some images mirrored, the others untouched
    x = _batch(n=32)
    y = augment_images(x, ImageAugment(flip=0.5), _gen(3))
    mirrored = [bool(torch.equal(y[i], x[i].flip(-1))) for i in range(len(x))]
    assert all(m or torch.equal(y[i], x[i]) for i, m in enumerate(mirrored)) and 0 < sum(mirrored) < len(x)


def test_shift_translates_the_content_and_repeats_the_edge():
    """One bright pixel in the middle of a flat image moves by at most shift x side in each
    direction; nothing else appears (the border is filled with the edge, here the flat value)."""
    x = torch.zeros(32, 1, 20, 20)
    x[:, :, 10, 10] = 1.0
    y = augment_images(x, ImageAugment(shift=0.1), _gen(0))  # up to 2 pixels
    moves = set()
    for img in y:
        assert img.sum() == 1.0 and img.max() == 1.0  # the pixel survives, once
        r, c = (img[0] == 1.0).nonzero()[0].tolist()
        assert abs(r - 10) <= 2 and abs(c - 10) <= 2
        moves.add((r - 10, c - 10))
    assert len(moves) > 5  # each image drawn on its own


def test_erase_fills_one_rectangle_of_two_to_33_percent():
    x = torch.zeros(16, 3, 20, 20)
    y = augment_images(x, ImageAugment(erase=1.0), _gen(0))
    for img in y:
        changed = (img != 0).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert 0.015 * 400 <= h * w <= 0.34 * 400
        assert changed.sum() >= 0.9 * h * w  # a filled rectangle (noise may hit 0 exactly, rarely)


def test_only_the_training_split_is_wrapped_and_its_labels_stay():
    recipe = load_recipe({
        "name": "r", "task": "image-classification", "data": {"dataset": "x", "augment": {"shift": 0.1, "erase": 0.5}},
        "stages": [{"name": "s", "steps": 1}],
    })
    pixels = np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype("float32")
    split = Dataset.from_dict({"pixel_values": pixels, "labels": list(range(8))}).with_format("numpy")
    adapter = adapter_for(recipe)
    wrapped = adapter.training_split(split, recipe.data)
    assert isinstance(wrapped, AugmentedImages) and len(wrapped) == 8
    torch.manual_seed(0)
    rows = wrapped.__getitems__([3, 5])
    assert [int(r["labels"]) for r in rows] == [3, 5]
    assert rows[0]["pixel_values"].shape == (3, 12, 12) and not torch.equal(rows[0]["pixel_values"], torch.as_tensor(pixels[3]))
    assert int(wrapped[2]["labels"]) == 2
    plain = load_recipe({**recipe.to_dict(), "data": {"dataset": "x"}})
    assert adapter.training_split(split, plain.data) is split  # no block: the split as it is


@pytest.mark.parametrize("data, task, fragment", [
    ({"augment": {"shift": 0.6}}, "image-classification", "data.augment.shift"),
    ({"augment": {"flip": 1.5}}, "image-classification", "data.augment.flip"),
    ({"augment": {}}, "image-classification", "is empty"),
    ({"augment": {"flip": 0.0}}, "image-classification", "changes nothing"),
    ({"augment": {"flip": 0.5}}, "text-classification", "changes training images"),
    ({"augment": {"rotate": 10}}, "image-classification", "data.augment.rotate"),
])
def test_recipe_errors_name_the_field(data, task, fragment):
    with pytest.raises(RecipeError, match=fragment):
        load_recipe({"name": "r", "task": task, "data": {"dataset": "x", **data}, "stages": [{"name": "s", "steps": 1}]})
