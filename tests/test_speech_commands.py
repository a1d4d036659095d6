"""The 12-class synthesised Speech Commands set (`speech-commands-synth`): splits that share no
voice, a test split whose engine and speakers training never heard, every class in every split, and clips that a
seed repeats byte for byte. One small synthesis (one espeak-ng accent per variant, one clip per
class and voice: 300 clips, about half a minute) shared by the module."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from pakd_hf.pipeline.data import DATASETS, MissingAssetError
from pakd_hf.pipeline.data import speech_commands as sc
from toy import missing


def _tools_present() -> bool:
    try:
        sc.require_binaries()
    except MissingAssetError:
        return False
    return True


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    if not _tools_present():
        missing(f"synthesisers absent: {sc.INSTALL}")
    cache = tmp_path_factory.mktemp("commands-cache")
    data = sc.load_speech_commands(seed=0, clips_per_voice=1, voices_per_variant=1, cache_dir=cache, progress=False)
    folder = sc.synthesise(seed=0, clips_per_voice=1, voices_per_variant=1, cache_dir=cache, progress=False)
    return data, folder


def test_registered():
    assert "speech-commands-synth" in DATASETS
    assert sc.CLASSES[-2:] == ["_unknown_", "_silence_"] and len(sc.CLASSES) == 12
    assert not set(sc.UNKNOWN_WORDS) & set(sc.CLASSES)


def test_test_split_shares_no_voice_and_holds_an_unheard_engine(made):
    data, _ = made
    voices = {name: set(split["voice"]) for name, split in data.items()}
    engines = {name: set(split["engine"]) for name, split in data.items()}
    speakers = {name: set(split["speaker"]) for name, split in data.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not voices[a] & voices[b], (a, b)
    assert engines["train"] == {"espeak-ng", "festival"} and engines["validation"] == {"espeak-ng", "festival"}
    assert engines["test"] == {"flite"}  # an engine training never heard: no synthesiser in common
    assert not engines["test"] & engines["train"]
    variants = {name: {v.split("+")[1] for v in vs if v.startswith("espeak-ng:")} for name, vs in voices.items()}
    assert not variants["train"] & variants["validation"] and len(variants["validation"]) == 3
    assert {v.split(":")[1] for v in voices["test"]} == set(sc.ENGINES["flite"])
    # No person recorded for a test voice is heard in training, through any engine: flite's kal
    # and slt are festival's kal_diphone and slt_arctic_hts speakers, which validation holds.
    assert not speakers["test"] & speakers["train"] and not speakers["validation"] & speakers["train"]
    assert speakers["test"] == {"kal", "awb", "rms", "slt"} and speakers["test"] & speakers["validation"] == {"kal", "slt"}
    assert speakers["train"] == {"ked"} | {f"espeak-ng:{v}" for v in variants["train"]}


@pytest.mark.parametrize("validation", ["voices", "engine"])
def test_no_split_shares_a_speaker_with_training(validation):
    """Without the synthesisers (the plan alone): in either layout no validation or test clip is
    spoken by a person, or an espeak-ng variant, that training holds, test is flite alone, and
    every split has every class."""
    clips = sc.plan(0, clips_per_voice=1, validation=validation)
    split = {name: [c for c in clips if c["split"] == name] for name in ("train", "validation", "test")}
    speakers = {name: {sc.speaker_of(c["engine"], c["voice"]) for c in rows} for name, rows in split.items()}
    assert not speakers["train"] & speakers["validation"] and not speakers["train"] & speakers["test"]
    assert {c["engine"] for c in split["test"]} == {"flite"} and {c["voice"] for c in split["test"]} == set(sc.ENGINES["flite"])
    assert not {c["engine"] for c in split["train"]} & {"flite"}
    for name, rows in split.items():
        assert {c["class"] for c in rows} == set(sc.CLASSES), name
        assert all(sc.split_of(c["engine"], c["voice"], validation) == name for c in rows[::97]), name


def test_each_layout_has_its_own_cache_folder():
    """Every clip file exists in both layouts, so a layout that shared the other's cache folder
    would read the other's splits from its manifest. The default set's key is pinned: a change
    to it re-synthesises every user's set, which a change should do on purpose (bump FORMAT)."""
    assert sc.cache_key(0, 6) == "d995567e4e5f74c9"  # the shipped recipe's set
    assert sc.cache_key(0, 6, validation="engine") != sc.cache_key(0, 6)
    assert sc.cache_key(0, 1, 1, validation="engine") != sc.cache_key(0, 1, 1)


def test_an_unheard_engine_can_validate():
    """validation="engine": festival's three voices validate (an engine training never hears, as
    test's flite), every espeak-ng variant trains; no test speaker trains, every class everywhere."""
    from pakd_hf.errors import RecipeError
    from pakd_hf.pipeline.preflight import _check_options

    clips = sc.plan(0, clips_per_voice=1, voices_per_variant=1, validation="engine")
    engines = {split: {c["engine"] for c in clips if c["split"] == split} for split in ("train", "validation", "test")}
    assert engines == {"train": {"espeak-ng"}, "validation": {"festival"}, "test": {"flite"}}
    speakers = {split: {sc.speaker_of(c["engine"], c["voice"]) for c in clips if c["split"] == split} for split in engines}
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["validation"]
    assert speakers["validation"] == {"kal", "ked", "slt"}
    assert {v.split("+")[1] for v in {c["voice"] for c in clips if c["split"] == "train"}} == set(sc.VARIANTS)
    for split in engines:
        assert {c["class"] for c in clips if c["split"] == split} == set(sc.CLASSES), split
    # The default layout is the one the module's constants give, and an unknown condition is one line.
    assert sc.layout() == (sc.SPLIT_VARIANTS, sc.SPLIT_VOICES) and sc.split_of("festival", "ked_diphone") == "train"
    assert sc.split_of("festival", "ked_diphone", validation="engine") == "validation"
    with pytest.raises(ValueError, match="validation must be one of 'voices', 'engine'"):
        sc.plan(0, 1, validation="festival")
    with pytest.raises(RecipeError, match="data.options.validation.*must be one of 'voices', 'engine'"):
        _check_options("speech-commands-synth", {"validation": "festival"})


def test_every_voice_of_a_speaker_is_named():
    """Every festival and flite voice has its recorded speaker; a new voice without one fails here."""
    for engine in ("festival", "flite"):
        assert set(sc.SPEAKERS[engine]) == set(sc.ENGINES[engine]), engine
    assert sc.speaker_of("espeak-ng", "en-us+klatt2") == "espeak-ng:klatt2"


def test_every_class_in_every_split_and_balanced(made):
    data, _ = made
    for name, split in data.items():
        assert split.features["label"].names == sc.CLASSES
        counts = Counter(split["label"])
        assert set(counts) == set(range(12)) and len(set(counts.values())) == 1, (name, counts)
        # one clip per class by each espeak-ng voice, and as many by each festival / flite voice as
        # a whole espeak-ng variant gets (here one accent per variant: one clip)
        assert set(Counter(zip(split["voice"], split["label"])).values()) == {1}, name
        words = Counter(zip(split["label"], split["word"]))
        for (label, word), _ in words.items():
            cls = sc.CLASSES[label]
            assert word == ("" if cls == "_silence_" else word) and (word in sc.UNKNOWN_WORDS if cls == "_unknown_" else True)
            assert cls in ("_unknown_", "_silence_") or word == cls
        audio = split.with_format("numpy")[:]["audio"]
        assert audio.shape == (len(split), 16000) and audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
        assert (np.abs(audio).max(axis=1) > 0).all()


def test_a_clip_is_the_same_when_made_alone(made, tmp_path):
    """Everything about a clip derives from (seed, voice, class, k): made again in another
    folder, with its own noise bank, one clip of each engine and a silence clip are byte-identical."""
    _, folder = made
    clips = json.loads((folder / "manifest.json").read_text())["clips"]
    picks = [next(c for c in clips if c["engine"] == e and c["class"] == "left") for e in sc.ENGINES]
    picks.append(next(c for c in clips if c["class"] == "_silence_"))
    bank = sc.noise_bank(tmp_path)
    for c in picks:
        sc.make_clip(c["engine"], c["voice"], c, bank, tmp_path / c["file"])
        assert (tmp_path / c["file"]).read_bytes() == (folder / c["file"]).read_bytes(), c["file"]
    assert sc.clip_params(0, "flite:slt", "left", 0) == sc.clip_params(0, "flite:slt", "left", 0)
    assert sc.clip_params(0, "flite:slt", "left", 0) != sc.clip_params(1, "flite:slt", "left", 0)


def test_cached_set_is_reused_without_the_synthesisers(made, monkeypatch):
    _, folder = made

    def boom(*args, **kwargs):
        raise AssertionError("synthesised again")

    monkeypatch.setattr(sc, "make_clip", boom)
    monkeypatch.setattr(sc, "require_binaries", boom)
    assert sc.synthesise(seed=0, clips_per_voice=1, voices_per_variant=1, cache_dir=folder.parent.parent, progress=False) == folder


def test_missing_synthesisers_fail_with_the_install_line(tmp_path, monkeypatch):
    which = shutil.which
    monkeypatch.setattr(sc.shutil, "which", lambda name: None if name == "flite" else which(name))
    with pytest.raises(MissingAssetError, match="flite.*apt-get install -y .*flite festival"):
        sc.synthesise(seed=0, clips_per_voice=1, voices_per_variant=1, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="voices_per_variant"):
        sc.synthesise(voices_per_variant=9, cache_dir=tmp_path)
