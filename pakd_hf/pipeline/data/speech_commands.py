"""Speech Commands-style keyword spotting, synthesised offline by three engines and corrupted.

The 12 classes of the Speech Commands v2 benchmark (Warden, 2018): the 10 keywords ``yes no
up down left right on off stop go``, ``_unknown_`` (any other word: the other 25 Speech
Commands words and a dozen near-misses of the keywords, such as *lift*, *stock*, *dawn*) and
``_silence_`` (background noise, no speech). No spoken-word data set ships in any package,
so every clip is made here, once, and cached.

Voices come from three synthesisers in Debian's archive:

- ``espeak-ng`` (formant): 8 English accents x 17 voice variants = 136 voices;
- ``festival`` (diphone and HTS): ``kal_diphone``, ``ked_diphone`` (festvox-kallpc16k,
  festvox-kdlpc16k), ``cmu_us_slt_arctic_hts`` (festvox-us-slt-hts);
- ``flite`` (Festival-lite's own voices): ``kal``, ``kal16``, ``awb``, ``rms``, ``slt``.

festival and flite voices are built from recordings of people, and two of those people are
behind voices of both engines: flite's ``kal`` and ``kal16`` come from the same diphone
recordings as festival's ``kal_diphone`` (flite's README: "basically the same diphone voice"),
and flite's ``slt`` and festival's ``cmu_us_slt_arctic_hts`` from the same CMU ARCTIC speaker.
The ``speaker`` column names that person (``kal``, ``ked``, ``slt``, ``awb``, ``rms``); an
espeak-ng voice's speaker is its variant, which sets its timbre whatever the accent.

Splits hold out speakers AND whole synthesisers, so test measures generalisation rather than
memorised timbre:

- train: espeak-ng voices of 14 of the 17 variants (all 8 accents each) and festival's
  ``ked_diphone``;
- validation (a third condition): espeak-ng voices of the 3 other variants and festival's
  ``kal_diphone`` and ``cmu_us_slt_arctic_hts``: speakers training never heard, from engines it
  did;
- test: flite's five voices: an engine, and speakers, training never heard. No speaker and no
  synthesiser of the test split is in training. Two of test's speakers (kal, slt) are in
  validation, through festival: choices are made on speakers test also holds, never on test's
  engine.

(espeak-ng variants are held out whole: a variant sets the timbre whatever the accent.) With
``validation="engine"`` validation is instead festival's three voices, an engine training never
hears (as test's), and training is espeak-ng alone (all 17 variants): validation then measures
what test measures, a synthesiser the model never heard, at the cost of the one recorded voice
training had. Every class has the same number of clips in a split: ``clips_per_voice`` per espeak-ng voice, and
as many per festival or flite voice as a whole espeak-ng variant gets (``clips_per_voice`` x
its 8 accents), so one festival or flite voice weighs as much as one espeak-ng variant.

Every clip is one second at 16 kHz, made with seeded randomness from ``(seed, voice, class,
k)`` alone (so a clip is the same whatever else is made): the word is spoken, its silence
trimmed, then with sox a tempo change (0.8-1.25x, pitch kept), a pitch shift (-300 to +300
cents), with probability 0.4 reverberation (random reverberance and room size), a random peak
level (0.1-0.9) and a random onset inside the window; with probability 0.7 background noise is
added at an SNR drawn from 0-20 dB. The noise is sox's white, pink or brown noise (``synth``,
repeatable: a 60-second bank of each, made once, and a random one-second window of it per
clip); ``_silence_`` clips are such noise alone, at a random level. No package ships recorded
noise, so none is used. Columns: ``audio`` (float32, 16,000 values), ``sampling_rate``,
``label`` (the 12 classes), ``voice`` (``engine:voice``), ``speaker``, ``engine``, ``word`` (what was
said; empty for ``_silence_``). The cache: ``$HF_HOME/pakd/speech-commands-synth/<hash>/``
(``cache_dir=X``: ``X/speech-commands-synth/<hash>/``), with ``manifest.json`` written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from . import MissingAssetError
from .speech_keywords import (
    ACCENTS,
    NUM_SAMPLES,
    SAMPLE_RATE,
    VARIANTS,
    WORDS,
    list_array,
    cache_root,
    read_wav,
    run_jobs,
    write_wav,
)

__all__ = ["CLASSES", "ENGINES", "SPEAKERS", "SPLIT_VOICES", "VALIDATIONS", "cache_key", "layout", "load_speech_commands", "speaker_of",
           "split_of", "synthesise"]

UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES = [*WORDS, UNKNOWN, SILENCE]
# Speech Commands v2's other words, then near-misses of the keywords (none a homophone of one).
UNKNOWN_WORDS = [
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine", "one", "seven", "sheila",
    "six", "three", "tree", "two", "wow", "zero", "backward", "forward", "follow", "learn", "visual",
    "yet", "dawn", "lift", "stock", "goal", "upon", "own", "of", "light", "bet", "dig", "ten",
]  # fmt: skip
ENGINES = {
    "espeak-ng": [f"{accent}+{variant}" for accent in ACCENTS for variant in VARIANTS],
    "festival": ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"],
    "flite": ["kal", "kal16", "awb", "rms", "slt"],
}
# espeak-ng variants per split (whole variants held out), and the other engines' voices.
SPLIT_VARIANTS = {
    "train": ["m1", "m2", "m3", "m4", "m6", "m7", "f1", "f2", "f4", "f5", "klatt", "klatt3", "klatt4", "croak"],
    "validation": ["m5", "f3", "klatt2"],
    "test": [],
}
SPLIT_VOICES = {
    "train": {"festival": ["ked_diphone"]},
    "validation": {"festival": ["kal_diphone", "cmu_us_slt_arctic_hts"]},
    "test": {"flite": ENGINES["flite"]},
}
# validation="engine": festival's voices validate, every espeak-ng variant trains.
ENGINE_SPLIT_VARIANTS = {"train": SPLIT_VARIANTS["train"] + SPLIT_VARIANTS["validation"], "validation": [], "test": []}
ENGINE_SPLIT_VOICES = {"train": {}, "validation": {"festival": ENGINES["festival"]}, "test": {"flite": ENGINES["flite"]}}
VALIDATIONS = ("voices", "engine")

# The person recorded for each festival and flite voice (see the module's docstring).
SPEAKERS = {
    "festival": {"kal_diphone": "kal", "ked_diphone": "ked", "cmu_us_slt_arctic_hts": "slt"},
    "flite": {"kal": "kal", "kal16": "kal", "awb": "awb", "rms": "rms", "slt": "slt"},
}
INSTALL = "apt-get install -y espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
TEMPO = (0.8, 1.25)
PITCH_CENTS = (-300, 300)
REVERB = 0.4  # probability
PEAK = (0.1, 0.9)
NOISE = 0.7  # probability of background noise under speech
SNR_DB = (0.0, 20.0)
SILENCE_PEAK = (0.002, 0.3)
NOISE_COLOURS = ("whitenoise", "pinknoise", "brownnoise")
NOISE_SECONDS = 60
FORMAT = 2  # bump when the synthesis recipe changes: a new cache folder


def layout(validation: str = "voices") -> tuple[dict, dict]:
    """(espeak-ng variants, other engines' voices) per split for a ``validation`` condition."""
    if validation not in VALIDATIONS:
        raise ValueError(f"validation must be one of {', '.join(map(repr, VALIDATIONS))}, got {validation!r}")
    return (SPLIT_VARIANTS, SPLIT_VOICES) if validation == "voices" else (ENGINE_SPLIT_VARIANTS, ENGINE_SPLIT_VOICES)


def split_of(engine: str, voice: str, validation: str = "voices") -> str | None:
    """The split a voice belongs to (None: in no split)."""
    split_variants, split_voices = layout(validation)
    for split, variants in split_variants.items():
        if engine == "espeak-ng" and voice.split("+", 1)[1] in variants:
            return split
        if voice in split_voices[split].get(engine, []):
            return split
    return None


def speaker_of(engine: str, voice: str) -> str:
    """Who a voice sounds like: the recorded person, or an espeak-ng voice's variant."""
    if engine == "espeak-ng":
        return f"espeak-ng:{voice.split('+', 1)[1]}"
    return SPEAKERS[engine][voice]


def require_binaries() -> None:
    missing = [name for name in ("espeak-ng", "sox", "flite", "text2wave") if shutil.which(name) is None]
    voices = Path("/usr/share/festival/voices")  # Debian's festvox-* packages install here
    absent = [v for v in ENGINES["festival"] if not any((voices / lang / v).is_dir() for lang in ("english", "us"))]
    if shutil.which("text2wave") and absent:
        missing.append(f"festival's voices {', '.join(absent)}")
    if missing:
        raise MissingAssetError(f"{', '.join(missing)} not found (needed to synthesise speech-commands-synth): {INSTALL}")


def clip_params(seed: int, voice: str, cls: str, k: int) -> dict:
    """The random settings of one clip; they depend on nothing else, so clips are stable."""
    rng = random.Random(f"{seed}|{voice}|{cls}|{k}")
    params = {
        "word": "" if cls == SILENCE else (rng.choice(UNKNOWN_WORDS) if cls == UNKNOWN else cls),
        "tempo": round(rng.uniform(*TEMPO), 3),
        "pitch": rng.randint(*PITCH_CENTS),
        "reverb": [rng.randint(20, 80), rng.randint(20, 100)] if rng.random() < REVERB else None,
        "peak": round(rng.uniform(*PEAK), 4),
        "onset": round(rng.random(), 4),
        "noise": rng.choice(NOISE_COLOURS),
        "noise_at": round(rng.random(), 6),  # where in the noise bank its window starts
        "snr_db": round(rng.uniform(*SNR_DB), 2) if rng.random() < NOISE else None,
        "silence_peak": round(rng.uniform(*SILENCE_PEAK), 4),
    }
    return params


def _speak(engine: str, voice: str, word: str, workdir: Path) -> Path:
    """The engine's own WAV of one word (its rate and format; sox converts)."""
    out = workdir / "speech.wav"
    if engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", voice, "-w", str(out), word]
    elif engine == "flite":
        cmd = ["flite", "-voice", voice, "-t", word, "-o", str(out)]
    else:
        (workdir / "word.txt").write_text(word + "\n")
        cmd = ["text2wave", "-eval", f"(voice_{voice})", "-o", str(out), str(workdir / "word.txt")]
    subprocess.run(cmd, capture_output=True, check=True)
    return out


def _sox_float(args: list[str]) -> np.ndarray:
    # float output: no dither (sox dithers randomly when it reduces to 16 bits: not repeatable)
    raw = subprocess.run(["sox", "-V1", "-R", *args], capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype="<f4").copy()


def noise_bank(folder: Path) -> dict[str, np.ndarray]:
    """``NOISE_SECONDS`` of each of sox's noise colours at 16 kHz, peak 1 (made once)."""
    bank = {}
    for colour in NOISE_COLOURS:
        path = folder / f"noise-{colour}.wav"
        if not path.is_file():
            noise = _sox_float(["-n", "-r", str(SAMPLE_RATE), "-c", "1", "-t", "raw", "-e", "floating-point", "-b", "32", "-",
                                "synth", str(NOISE_SECONDS), colour])  # fmt: skip
            write_wav(noise / np.abs(noise).max() * 32767.0, path)
        bank[colour] = read_wav_long(path).astype(np.float32)
    return bank


def read_wav_long(path: Path) -> np.ndarray:
    """A 16-bit mono WAV of any length as float32 in [-1, 1]."""
    with wave.open(str(path), "rb") as handle:
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def make_clip(engine: str, voice: str, params: dict, bank: dict[str, np.ndarray], path: Path) -> None:
    """One clip (see the module's docstring for the chain) as a 1 s 16-bit WAV."""
    start = int(params["noise_at"] * (bank[params["noise"]].size - NUM_SAMPLES))
    noise = bank[params["noise"]][start : start + NUM_SAMPLES].astype(np.float32)
    if not params["word"]:  # _silence_: noise alone
        write_wav(noise * (params["silence_peak"] * 32767.0 / np.abs(noise).max()), path)
        return
    with tempfile.TemporaryDirectory(prefix="pakd-tts-") as tmp:
        speech = _speak(engine, voice, params["word"], Path(tmp))
        effects = ["silence", "1", "0.005", "0.5%", "reverse", "silence", "1", "0.005", "0.5%", "reverse",
                   "tempo", "-s", str(params["tempo"]), "pitch", str(params["pitch"])]  # fmt: skip
        if params["reverb"]:
            effects += ["reverb", str(params["reverb"][0]), "50", str(params["reverb"][1])]
        samples = _sox_float([str(speech), "-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1",
                              "-r", str(SAMPLE_RATE), "-", *effects])  # fmt: skip
    if samples.size == 0 or not np.abs(samples).max() > 0:
        raise RuntimeError(f"{engine} produced no speech for {params['word']!r} with voice {voice} ({params})")
    samples = samples[:NUM_SAMPLES] * (params["peak"] / np.abs(samples[:NUM_SAMPLES]).max())
    clip = np.zeros(NUM_SAMPLES, dtype=np.float32)
    at = int(params["onset"] * (NUM_SAMPLES - samples.size))
    clip[at : at + samples.size] = samples
    if params["snr_db"] is not None:
        power = float(np.mean(samples**2))
        noise = noise * np.sqrt(power / (float(np.mean(noise**2)) * 10 ** (params["snr_db"] / 10)))
        clip += noise
        clip *= min(1.0, 0.99 / np.abs(clip).max())  # no clipping
    write_wav(clip * 32767.0, path)


def plan(seed: int, clips_per_voice: int, voices_per_variant: int | None = None, validation: str = "voices") -> list[dict]:
    """Every clip to make: engine, voice, class, k, split, file and its settings."""
    split_variants, split_voices = layout(validation)
    clips = []
    for split, variants in split_variants.items():
        espeak = [v for v in ENGINES["espeak-ng"] if v.split("+", 1)[1] in variants]
        if voices_per_variant is not None:  # a smaller set: that many accents per variant, seeded
            rng = random.Random(f"{seed}|{split}")
            espeak = [v for variant in variants
                      for v in rng.sample([v for v in espeak if v.endswith("+" + variant)], voices_per_variant)]
        voices = [("espeak-ng", v, clips_per_voice) for v in espeak]
        per_voice = clips_per_voice * (voices_per_variant or len(ACCENTS))  # as many as one espeak-ng variant
        for engine, members in split_voices[split].items():
            voices += [(engine, voice, per_voice) for voice in members]
        for engine, voice, count in voices:
            for cls in CLASSES:
                for k in range(count):
                    clips.append({"engine": engine, "voice": voice, "class": cls, "k": k, "split": split,
                                  "file": f"clips/{engine}/{voice}/{cls}_{k}.wav",
                                  **clip_params(seed, f"{engine}:{voice}", cls, k)})  # fmt: skip
    return clips


def _spec(seed: int, clips_per_voice: int, voices_per_variant: int | None, validation: str) -> dict:
    """Everything a set's clips and splits depend on; its hash names the cache folder."""
    split_variants, split_voices = layout(validation)
    return {"format": FORMAT, "seed": seed, "clips_per_voice": clips_per_voice, "voices_per_variant": voices_per_variant,
            "classes": CLASSES, "unknown_words": UNKNOWN_WORDS, "engines": ENGINES, "split_variants": split_variants,
            "split_voices": split_voices, "tempo": TEMPO, "pitch_cents": PITCH_CENTS, "reverb": REVERB, "peak": PEAK,
            "noise": NOISE, "snr_db": SNR_DB, "silence_peak": SILENCE_PEAK, "noise_seconds": NOISE_SECONDS}  # fmt: skip


def cache_key(seed: int = 0, clips_per_voice: int = 1, voices_per_variant: int | None = None,
              validation: str = "voices") -> str:
    """The cache folder's name for a set (:func:`synthesise`)."""
    return _key(_spec(seed, clips_per_voice, voices_per_variant, validation))


def _key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def synthesise(seed: int = 0, clips_per_voice: int = 1, voices_per_variant: int | None = None,
               cache_dir: str | os.PathLike | None = None, workers: int = 2, progress: bool = True,
               validation: str = "voices") -> Path:
    """Make (once) every clip of :func:`plan`; the folder. A second call finds ``manifest.json``
    and makes nothing; missing clips (an interrupted run, a deleted file) are made again."""
    if clips_per_voice < 1:
        raise ValueError(f"clips_per_voice must be >= 1, got {clips_per_voice}")
    if voices_per_variant is not None and not 1 <= voices_per_variant <= len(ACCENTS):
        raise ValueError(f"voices_per_variant must be in [1, {len(ACCENTS)}], got {voices_per_variant}")
    spec = _spec(seed, clips_per_voice, voices_per_variant, validation)
    folder = cache_root(cache_dir) / "speech-commands-synth" / _key(spec)
    clips = plan(seed, clips_per_voice, voices_per_variant, validation)
    todo = [c for c in clips if not (folder / c["file"]).is_file()]
    if not todo and (folder / "manifest.json").is_file():
        return folder
    require_binaries()
    folder.mkdir(parents=True, exist_ok=True)
    bank = noise_bank(folder)
    run_jobs([lambda c=c: make_clip(c["engine"], c["voice"], c, bank, folder / c["file"]) for c in todo],
             f"synthesising speech-commands-synth into {folder}", workers, progress)
    versions = {}
    for name, cmd in (("espeak-ng", ["espeak-ng", "--version"]), ("flite", ["flite", "--version"]),
                      ("sox", ["sox", "--version"])):
        versions[name] = subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    manifest = {**spec, "versions": versions, "clips": clips}
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / "manifest.json")
    return folder


def load_speech_commands(seed: int = 0, clips_per_voice: int = 1, voices_per_variant: int | None = None,
                         cache_dir: str | os.PathLike | None = None, workers: int = 2, progress: bool = True,
                         validation: str = "voices"):
    """DatasetDict(train, validation, test) of the 12 classes; see the module's docstring.

    ``clips_per_voice``: clips per class by each espeak-ng voice (each festival or flite voice
    gets as many as a whole espeak-ng variant). ``voices_per_variant``: that many of the 8 accents per espeak-ng variant
    (a seeded choice) for a smaller set; default all. ``validation``: ``"voices"`` (default:
    espeak-ng variants and festival speakers training never heard) or ``"engine"`` (festival's
    voices, an engine training never heard; training is espeak-ng alone).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    try:
        from datasets import List
    except ImportError:  # datasets < 4
        from datasets import Sequence as List

    folder = synthesise(seed, clips_per_voice, voices_per_variant, cache_dir, workers, progress, validation)
    clips = json.loads((folder / "manifest.json").read_text())["clips"]
    features = Features({"audio": List(Value("float32")), "sampling_rate": Value("int32"), "label": ClassLabel(names=CLASSES),
                         "voice": Value("string"), "speaker": Value("string"), "engine": Value("string"),
                         "word": Value("string")})  # fmt: skip
    splits = {}
    for name in ("train", "validation", "test"):
        rows = [c for c in clips if c["split"] == name]
        splits[name] = Dataset.from_dict({
            "audio": list_array([read_wav(folder / c["file"]) for c in rows]),
            "sampling_rate": [SAMPLE_RATE] * len(rows),
            "label": [CLASSES.index(c["class"]) for c in rows],
            "voice": [f"{c['engine']}:{c['voice']}" for c in rows],
            "speaker": [speaker_of(c["engine"], c["voice"]) for c in rows],
            "engine": [c["engine"] for c in rows],
            "word": [c["word"] for c in rows],
        }, features=features)  # fmt: skip
    return DatasetDict(splits)
