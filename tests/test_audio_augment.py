"""Random changes to training clips (`data.augment` for audio-classification): what each one
does to a batch of spectrograms or raw samples, that a seed repeats them, that only the
training split is wrapped, and the recipe's one-line errors."""

import math
import pickle

import numpy as np
import pytest
import torch
from datasets import Dataset

from pakd_hf import RecipeError, load_recipe
from pakd_hf.pipeline.audio_augment import AugmentedClips, augment_clips
from pakd_hf.pipeline.tasks import adapter_for
from pakd_hf.recipe import AudioAugment, ImageAugment


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spectrograms(n=8, bins=20, frames=50, seed=0):
    return torch.randn(n, bins, frames, generator=_gen(seed))


def test_a_seed_repeats_the_changes_and_another_seed_does_not():
    x = _spectrograms()
    spec = AudioAugment(time_shift=0.2, time_mask=0.2, freq_mask=0.2)
    a, b, c = (augment_clips(x, spec, _gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x) and torch.equal(x, _spectrograms())  # the input itself is never changed
    assert a.shape == x.shape and a.dtype == x.dtype


def test_time_shift_moves_the_frames_and_fills_the_gap_with_silence():
    """Frame t of a clip holds the value t (its lowest value, 0, is its silence): after a shift
    by s frames every kept frame holds t - s and the uncovered frames hold 0."""
    frames = 50
    x = torch.arange(frames, dtype=torch.float32).expand(32, 4, frames).clone()
    y = augment_clips(x, AudioAugment(time_shift=0.1), _gen(0))  # up to 5 frames
    def shifted(s):
        row = torch.roll(torch.arange(frames, dtype=torch.float32), s)
        row[:s] = 0 if s > 0 else row[:s]
        if s < 0:
            row[s:] = 0
        return row

    moves = set()
    for clip in y:
        assert torch.equal(clip, clip[0].expand_as(clip))  # every bin moved alike
        matches = [s for s in range(-5, 6) if torch.equal(clip[0], shifted(s))]
        assert len(matches) == 1, clip[0]
        moves.add(matches[0])
    assert len(moves) > 4 and any(m > 0 for m in moves) and any(m < 0 for m in moves)


def test_masks_set_bands_of_frames_and_bins_to_the_clip_mean():
    x = _spectrograms(n=16, bins=40, frames=100)
    y = augment_clips(x, AudioAugment(time_mask=0.1, time_masks=2), _gen(0))
    for clip, orig in zip(y, x):
        changed = (clip != orig).any(0)  # frames touched
        assert int(changed.sum()) <= 2 * 10  # two bands of at most 10 frames
        if changed.any():
            assert torch.allclose(clip[:, changed], orig.mean().expand(40, int(changed.sum())))
        assert torch.equal(clip[:, ~changed], orig[:, ~changed])
    assert (y != x).any()
    y = augment_clips(x, AudioAugment(freq_mask=0.25, freq_masks=1), _gen(0))
    touched = [int((clip != orig).any(1).sum()) for clip, orig in zip(y, x)]
    assert max(touched) <= 10 and sum(touched) > 0  # one band of at most 10 of 40 bins
    for clip, orig in zip(y, x):
        rows = (clip != orig).any(1)
        if rows.any():  # the band is contiguous and set to the clip's mean
            idx = rows.nonzero().flatten()
            assert int(idx.max() - idx.min() + 1) == len(idx)
            assert torch.allclose(clip[rows], orig.mean().expand(len(idx), 100))


def test_freq_warp_moves_content_along_the_bins_and_keeps_both_ends():
    """Bin i of every frame holds i: after a warp by factor f, bin i holds where it read from,
    i * f below the knee (80% of the axis, over f above 1), then a line to the last bin."""
    from pakd_hf.pipeline.audio_augment import _warp_bins

    bins, frames = 41, 6
    ramp = torch.arange(bins, dtype=torch.float32).view(1, bins, 1).expand(3, bins, frames).clone()
    y = _warp_bins(ramp, torch.tensor([1.0, 1.1, 0.9]))
    assert torch.allclose(y[0], ramp[0])  # factor 1: as it was
    for row, f in zip(y[1:], (1.1, 0.9)):
        assert torch.equal(row, row[:, :1].expand_as(row))  # every frame warped alike
        read = row[:, 0]
        assert read[0] == 0 and torch.isclose(read[-1], torch.tensor(40.0))  # both ends kept
        assert (read[1:] > read[:-1]).all()  # order kept, nothing folded back
        knee = 0.8 * 40 / max(f, 1.0)
        i = torch.arange(bins)
        assert torch.allclose(read[i <= knee], i[i <= knee].float() * f, atol=1e-5)
        # above the knee: the straight line from (knee, knee * f) to (40, 40), continuous at the knee
        line = knee * f + (i[i > knee].float() - knee) * (40 - knee * f) / (40 - knee)
        assert torch.allclose(read[i > knee], line, atol=1e-5)
        assert read[-1] == 40.0  # exactly: the last bin reads itself, nothing of the one below
    # a peak at bin 20 moves to about 20 / f: down for f > 1, up for f < 1
    peak = torch.zeros(2, bins, frames)
    peak[:, 20] = 1.0
    moved = _warp_bins(peak, torch.tensor([1.25, 0.8])).sum(-1)
    assert moved[0].argmax() == 16 and moved[1].argmax() == 25
    one = torch.randn(2, 1, frames)  # a single bin has no axis to warp
    assert torch.equal(_warp_bins(one, torch.tensor([1.1, 0.9])), one)


def test_freq_warp_draws_one_factor_per_clip_and_leaves_the_other_draws_alone():
    x = _spectrograms(n=16, bins=40, frames=30)
    warped = augment_clips(x, AudioAugment(freq_warp=0.2), _gen(3))
    assert torch.equal(warped, augment_clips(x, AudioAugment(freq_warp=0.2), _gen(3)))
    assert all(not torch.equal(w, c) for w, c in zip(warped, x))  # a factor of exactly 1 is not drawn
    assert torch.equal(warped[:, 0], x[:, 0]) and torch.equal(warped[:, -1], x[:, -1])
    ramp = torch.arange(40, dtype=torch.float32).view(1, 40, 1).expand(16, 40, 30).clone()  # bin i holds i
    read = augment_clips(ramp, AudioAugment(freq_warp=0.2), _gen(3))[:, 10, 0]  # 10 x each clip's factor
    assert len(set(read.tolist())) == 16 and read.min() >= 8 and read.max() <= 12
    # the time shift draws before the warp: the same moves with or without it
    ramp = torch.arange(30, dtype=torch.float32).expand(16, 40, 30).clone()  # every bin holds its frame's index
    moved = augment_clips(ramp, AudioAugment(time_shift=0.2), _gen(5))
    assert torch.allclose(augment_clips(ramp, AudioAugment(time_shift=0.2, freq_warp=0.2), _gen(5)), moved)
    # unset, a recipe's changes are what they were before the field existed (pinned from that code)
    before = augment_clips(_spectrograms(), AudioAugment(time_shift=0.2, time_mask=0.2, freq_mask=0.2), _gen(4))
    assert math.isclose(float(before.sum()), -3629.0347, rel_tol=1e-5)
    assert math.isclose(float(before.abs().sum()), 7112.0503, rel_tol=1e-5)
    assert torch.allclose(before[3, 5, :4], torch.tensor([0.54799271, 0.16603521, 1.81156874, 0.15735571]))


def test_an_unset_freq_warp_keeps_every_earlier_recipe_key():
    """The teacher's cache key reads the augment block's repr and the run keys its to_dict: with
    freq_warp unset both are what they were before the field existed (a recipe's teacher and
    checkpoints are found again); set, they differ."""
    plain = _recipe({"time_shift": 0.1, "time_mask": 0.1, "time_masks": 2, "freq_mask": 0.1, "freq_masks": 2})
    assert repr(plain.data.augment) == ("AudioAugment(time_shift=0.1, time_mask=0.1, time_masks=2, freq_mask=0.1, "
                                        "freq_masks=2)")
    assert "freq_warp" not in plain.to_dict()["data"]["augment"]
    warped = _recipe({**plain.to_dict()["data"]["augment"], "freq_warp": 0.1})
    assert repr(warped.data.augment).endswith("freq_masks=2, freq_warp=0.1)")
    assert warped.fingerprint() != plain.fingerprint()


def test_raw_samples_take_time_changes_with_silence_zero():
    x = torch.ones(16, 1600)
    y = augment_clips(x, AudioAugment(time_shift=0.1), _gen(0))  # the shift alone: zeros at one end only
    for row in y:
        zeros = (row == 0).nonzero().flatten()
        assert set(row.unique().tolist()) <= {0.0, 1.0} and len(zeros) <= 160
        if len(zeros):
            assert zeros.tolist() in (list(range(len(zeros))), list(range(1600 - len(zeros), 1600)))
    assert (y == 0).any()
    y = augment_clips(x, AudioAugment(time_mask=0.05), _gen(0))  # the masks alone: bands of 0 inside
    assert set(y.unique().tolist()) <= {0.0, 1.0} and (y == 0).any() and int((y == 0).sum(1).max()) <= 2 * 80
    with pytest.raises(ValueError, match="features"):
        augment_clips(torch.ones(2, 2, 2, 2), AudioAugment(time_shift=0.1))


def _recipe(augment, task="audio-classification"):
    return load_recipe({"name": "r", "task": task, "data": {"dataset": "x", "augment": augment},
                        "stages": [{"name": "s", "steps": 1}]})


def test_only_the_training_split_is_wrapped_and_its_labels_stay():
    recipe = _recipe({"time_shift": 0.1, "freq_mask": 0.2})
    assert isinstance(recipe.data.augment, AudioAugment)
    feats = np.random.default_rng(0).standard_normal((8, 20, 50)).astype("float32")
    split = Dataset.from_dict({"input_features": feats, "labels": list(range(8))}).with_format("numpy")
    wrapped = adapter_for(recipe).training_split(split, recipe.data)
    assert isinstance(wrapped, AugmentedClips) and len(wrapped) == 8 and wrapped.column == "input_features"
    torch.manual_seed(0)
    rows = wrapped.__getitems__([3, 5, 0, 1, 2, 4, 6, 7])
    assert [int(r["labels"]) for r in rows] == [3, 5, 0, 1, 2, 4, 6, 7]
    assert rows[0]["input_features"].shape == (20, 50)
    changed = [not torch.equal(r["input_features"], torch.as_tensor(feats[int(r["labels"])])) for r in rows]
    assert sum(changed) >= 4  # a draw may leave a clip as it is (no shift, empty bands), not most
    plain = load_recipe({**recipe.to_dict(), "data": {"dataset": "x"}})
    assert adapter_for(plain).training_split(split, plain.data) is split
    # raw samples: the time changes apply; frequency masks cannot, and say so in one line
    samples = Dataset.from_dict({"input_values": feats.reshape(8, -1), "labels": list(range(8))}).with_format("numpy")
    with pytest.raises(RecipeError, match="data.augment.freq_mask.*raw samples"):
        adapter_for(recipe).training_split(samples, recipe.data)
    warped = _recipe({"time_shift": 0.1, "freq_warp": 0.1})
    with pytest.raises(RecipeError, match="data.augment.freq_warp.*raw samples"):
        adapter_for(warped).training_split(samples, warped.data)
    timed = _recipe({"time_shift": 0.1})
    assert adapter_for(timed).training_split(samples, timed.data).column == "input_values"
    # picklable, for DataLoader workers that a spawn start method launches
    again = pickle.loads(pickle.dumps(wrapped))
    torch.manual_seed(1)
    a = wrapped.__getitems__([0, 1])
    torch.manual_seed(1)
    assert all(torch.equal(x["input_features"], y["input_features"]) for x, y in zip(a, again.__getitems__([0, 1])))


def test_frequency_masks_for_a_raw_sample_teacher_are_refused_before_any_work(tmp_path):
    """A wav2vec2 teacher reads raw samples: preflight names the field before data or output."""
    from toy import tiny_wav2vec2

    from pakd_hf.pipeline.preflight import preflight

    teacher = tiny_wav2vec2()
    teacher.save_pretrained(tmp_path / "w2v")
    raw = {"name": "r", "task": "audio-classification", "teacher": {"model": str(tmp_path / "w2v")},
           "data": {"dataset": "speech-keywords", "augment": {"freq_mask": 0.1}}, "stages": [{"name": "s", "steps": 1}]}
    with pytest.raises(RecipeError) as info:
        preflight(load_recipe(raw), build=False)
    assert info.value.field == "data.augment.freq_mask" and "raw samples" in str(info.value)
    with pytest.raises(RecipeError) as info:
        preflight(load_recipe({**raw, "data": {"dataset": "speech-keywords", "augment": {"freq_warp": 0.1}}}), build=False)
    assert info.value.field == "data.augment.freq_warp" and "raw samples" in str(info.value)
    with pytest.raises(RecipeError, match="remove freq_mask and freq_warp"):  # every field that must go, at once
        preflight(load_recipe({**raw, "data": {"dataset": "speech-keywords", "augment": {"freq_mask": 0.1, "freq_warp": 0.1}}}),
                  build=False)
    preflight(load_recipe({**raw, "data": {"dataset": "speech-keywords", "augment": {"time_mask": 0.1}}}), build=False)


def test_the_recipe_round_trips_and_tells_image_from_audio_changes():
    recipe = _recipe({"time_mask": 0.1, "time_masks": 3, "freq_warp": 0.1})
    again = load_recipe(recipe.to_dict())
    assert again.data.augment == AudioAugment(time_mask=0.1, time_masks=3, freq_warp=0.1)
    image = _recipe({"shift": 0.1}, task="image-classification")
    assert isinstance(load_recipe(image.to_dict()).data.augment, ImageAugment)


@pytest.mark.parametrize("augment, task, field, fragment", [
    ({"time_shift": 0.6}, "audio-classification", "data.augment.time_shift", "[0, 0.5]"),
    ({"time_masks": 11, "time_mask": 0.1}, "audio-classification", "data.augment.time_masks", "[0, 10]"),
    ({"time_mask": 0.1, "time_masks": 0}, "audio-classification", "data.augment", "changes nothing"),
    ({"freq_warp": 0.0}, "audio-classification", "data.augment", "changes nothing"),
    ({"freq_warp": 0.5}, "audio-classification", "data.augment.freq_warp", "[0, 0.3]"),
    ({}, "audio-classification", "data.augment", "is empty"),
    ({"time_shift": 0.1}, "image-classification", "data.augment", "changes training clips"),
    ({"shift": 0.1}, "audio-classification", "data.augment", "changes training images"),
    ({"time_shift": 0.1, "time_mask": 0.1, "flip": 0.5}, "audio-classification", "data.augment", "mixes the keys"),
    ({"time_shift": 0.1, "time_shfit": 0.1}, "audio-classification", "data.augment.time_shfit", "unknown key"),
    (True, "audio-classification", "data.augment", "must be a mapping, got True"),
    ({"time_shfit": 0.1}, "audio-classification", "data.augment.time_shfit", "did you mean 'time_shift'"),
])
def test_recipe_errors_name_the_field(augment, task, field, fragment):
    with pytest.raises(RecipeError) as info:
        _recipe(augment, task)
    assert info.value.field == field and fragment in str(info.value)
