"""Spoken keywords (yes no up down left right on off stop go), synthesised offline.

No spoken-word data set ships in any package, so this one is made with espeak-ng (speech)
and sox (resampling, silence trimming): every voice = an English accent x a voice variant
(``en-us+f3``), every clip a random speed (words per minute) and pitch, a random loudness
and a random onset inside the 1 s window. Clips are 16 kHz mono, exactly 16,000 samples
(int16 WAV on disk, float32 in [-1, 1] in the data set).

Splits hold out whole VOICES: no voice has clips in two splits (accents and variants do
recur across splits in other combinations; with ``holdout="variant"`` whole variants are
held out instead, so a test voice's timbre is never heard in training).

The clips are synthesised once into a cache folder and reused:
``$HF_HOME/pakd/speech-keywords/<hash of the synthesis parameters>/`` by default
(``cache_dir=X`` uses ``X/speech-keywords/<hash>/``). The folder holds
``clips/<voice>/<word>_<k>.wav`` and, written last, ``manifest.json`` (the parameters, the
espeak-ng version and every clip's voice / word / speed / pitch). Everything about a clip
derives from ``(seed, voice, word, k)``, so a given clip is the same whatever else is
synthesised, and an interrupted run resumes where it stopped. Synthesis is deterministic for a
given espeak-ng / sox build (sox writes floats, so no random dither); the hash does not include
the espeak-ng version, so another build reuses an existing cache rather than re-synthesising.

WAVs are read with the stdlib ``wave`` module: the ``datasets`` Audio feature needs
torchcodec, which does not work here. Columns: ``audio`` (float32 list, 16,000 values),
``sampling_rate`` (16000), ``label`` (ClassLabel of the 10 words), ``voice`` (string).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import MissingAssetError

INSTALL = "apt-get install -y espeak-ng sox"
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
# espeak-ng 1.51's English accents (`espeak-ng --voices=en`, the gmw/ voices; the mbrola
# ones need extra packages) and human-sounding variants (`espeak-ng --voices=variant`).
ACCENTS = ["en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "croak"]  # fmt: skip
VOICES = [f"{accent}+{variant}" for accent in ACCENTS for variant in VARIANTS]  # 8 x 17 = 136
SAMPLE_RATE = 16000
NUM_SAMPLES = 16000  # 1 s
SPEED = (110, 230)  # espeak-ng -s, words per minute
PITCH = (10, 90)  # espeak-ng -p, 0-99
PEAK = (0.3, 0.9)  # peak amplitude of a clip
FORMAT = 2  # bump when the synthesis recipe changes: a new cache folder


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The parent folder of pakd's generated assets: ``cache_dir`` or ``$HF_HOME/pakd``."""
    if cache_dir is not None:
        return Path(cache_dir)
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(hf_home) / "pakd"


def require_binaries() -> None:
    missing = [name for name in ("espeak-ng", "sox") if shutil.which(name) is None]
    if missing:
        raise MissingAssetError(f"{' and '.join(missing)} not found (needed to synthesise speech-keywords): {INSTALL}")


def clip_params(seed: int, voice: str, word: str, k: int) -> dict:
    """The random settings of one clip; they depend on nothing else, so clips are stable."""
    rng = random.Random(f"{seed}|{voice}|{word}|{k}")
    return {
        "speed": rng.randint(*SPEED),
        "pitch": rng.randint(*PITCH),
        "peak": round(rng.uniform(*PEAK), 4),
        "onset": round(rng.random(), 4),  # where the word starts, as a fraction of the free room
    }


def synthesise_clip(voice: str, word: str, params: dict, path: Path) -> None:
    """One clip: espeak-ng -> sox (16 kHz mono, leading / trailing silence cut) -> 1 s 16-bit WAV."""
    speech = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(params["speed"]), "-p", str(params["pitch"]), "--stdout", word],
        capture_output=True,
        check=True,
    ).stdout
    raw = subprocess.run(
        # fmt: off
        # float output: no dither (sox dithers randomly when it reduces to 16 bits: not repeatable)
        ["sox", "-V1", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-r", str(SAMPLE_RATE), "-",
         "silence", "1", "0.005", "0.5%", "reverse", "silence", "1", "0.005", "0.5%", "reverse"],
        # fmt: on
        input=speech,
        capture_output=True,
        check=True,
    ).stdout
    samples = np.frombuffer(raw, dtype="<f4").copy()
    if samples.size == 0 or not np.abs(samples).max() > 0:
        raise RuntimeError(f"espeak-ng produced no speech for {word!r} with voice {voice} ({params})")
    samples = samples[:NUM_SAMPLES]  # a slow word longer than 1 s keeps its first second
    samples *= params["peak"] * 32767.0 / np.abs(samples).max()
    clip = np.zeros(NUM_SAMPLES, dtype=np.float32)
    start = int(params["onset"] * (NUM_SAMPLES - samples.size))
    clip[start : start + samples.size] = samples
    write_wav(clip, path)


def write_wav(clip: np.ndarray, path: Path) -> None:
    """A clip (int16-scaled floats) as a 16-bit mono WAV, atomically: a clip exists only once
    complete, so an interrupted synthesis resumes where it stopped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.round(np.clip(clip, -32768, 32767)).astype("<i2").tobytes())
    os.replace(tmp, path)


def run_jobs(jobs: list, desc: str, workers: int, progress: bool) -> None:
    """Run callables on ``workers`` threads with a progress bar; the first error cancels the
    rest and is raised. Threads suffice: each clip is a few short subprocesses (the work is in
    the synthesiser and sox)."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(job) for job in jobs]
        bar = tqdm(total=len(futures), desc=desc, unit="clip", disable=not progress)
        try:
            for future in futures:
                future.result()
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            bar.close()


def read_wav(path: str | os.PathLike) -> np.ndarray:
    """A 16-bit mono WAV as float32 in [-1, 1], padded / trimmed to exactly 16,000 samples."""
    with wave.open(str(path), "rb") as handle:
        if handle.getsampwidth() != 2 or handle.getnchannels() != 1 or handle.getframerate() != SAMPLE_RATE:
            raise ValueError(f"{path}: expected 16-bit mono {SAMPLE_RATE} Hz")
        data = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    audio = np.zeros(NUM_SAMPLES, dtype=np.float32)
    audio[: min(NUM_SAMPLES, data.size)] = data[:NUM_SAMPLES] / 32768.0
    return audio


def synthesise(
    voices: list[str] | None = None,
    clips_per_voice: int = 2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Synthesise (once) ``clips_per_voice`` clips of every word by every voice; the folder.

    ``voices`` defaults to all of ``VOICES`` (136). A second call with the same arguments
    finds ``manifest.json`` and every clip, and synthesises nothing; missing clips (an
    interrupted run, a deleted file) are made again, the others kept.
    """
    voices = list(VOICES if voices is None else voices)
    if len(set(voices)) != len(voices):
        raise ValueError("voices must be distinct")
    if clips_per_voice < 1:
        raise ValueError(f"clips_per_voice must be >= 1, got {clips_per_voice}")
    spec = {
        "format": FORMAT, "seed": seed, "voices": voices, "words": WORDS, "clips_per_voice": clips_per_voice,
        "sample_rate": SAMPLE_RATE, "num_samples": NUM_SAMPLES, "speed": SPEED, "pitch": PITCH, "peak": PEAK,
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root(cache_dir) / "speech-keywords" / key
    clips = []
    for voice in voices:
        for word in WORDS:
            for k in range(clips_per_voice):
                clips.append({"voice": voice, "word": word, "k": k, "file": f"clips/{voice}/{word}_{k}.wav",
                              **clip_params(seed, voice, word, k)})  # fmt: skip
    todo = [c for c in clips if not (folder / c["file"]).is_file()]
    if not todo and (folder / "manifest.json").is_file():
        return folder

    if todo:
        require_binaries()
        run_jobs([lambda c=c: synthesise_clip(c["voice"], c["word"], c, folder / c["file"]) for c in todo],
                 f"synthesising speech-keywords into {folder}", workers, progress)
    espeak = shutil.which("espeak-ng")
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip() if espeak else "unknown"
    manifest = {**spec, "espeak_ng": version, "clips": clips}
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / "manifest.json")
    return folder


def split_voices(voices: list[str], seed: int, validation: float, test: float, holdout: str = "voice") -> dict[str, list[str]]:
    """Voices per split (disjoint). ``holdout="variant"`` keeps every variant in one split."""
    if holdout not in ("voice", "variant"):
        raise ValueError(f"holdout must be 'voice' or 'variant', got {holdout!r}")
    groups = sorted({v.split("+", 1)[-1] for v in voices} if holdout == "variant" else set(voices))
    if len(groups) < 3:
        raise ValueError(f"need at least 3 {holdout}s for voice-disjoint train / validation / test splits, got {len(groups)}")
    random.Random(seed).shuffle(groups)
    n_test = max(1, round(test * len(groups)))
    n_val = max(1, round(validation * len(groups)))
    if n_test + n_val >= len(groups):
        raise ValueError(f"validation + test leave no {holdout} for training ({len(groups)} in all)")
    parts = {
        "test": set(groups[:n_test]),
        "validation": set(groups[n_test : n_test + n_val]),
        "train": set(groups[n_test + n_val :]),
    }
    group = (lambda v: v.split("+", 1)[-1]) if holdout == "variant" else (lambda v: v)
    return {name: [v for v in voices if group(v) in members] for name, members in parts.items()}


def list_array(arrays: list[np.ndarray]):
    """Equal-length float32 arrays as one Arrow list column: ~20x faster than letting
    ``Dataset.from_dict`` convert a list of numpy arrays one by one."""
    import pyarrow as pa

    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.float32)
    offsets = np.arange(len(arrays) + 1, dtype=np.int32) * NUM_SAMPLES
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, pa.float32()))


def load_speech_keywords(
    seed: int = 0,
    clips_per_voice: int = 2,
    voices: list[str] | None = None,
    num_voices: int | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    holdout: str = "voice",
    cache_dir: str | os.PathLike | None = None,
    workers: int = 2,
    progress: bool = True,
):
    """DatasetDict(train, validation, test): columns audio, sampling_rate, label, voice.

    ``clips_per_voice`` clips of each of the 10 words by each voice (default: all 136 voices x
    2 = 2,720 clips, ~30 s to synthesise once with 2 workers). ``num_voices`` takes that many of
    ``voices`` (a seeded choice) for a smaller set. Validation / test get the given fractions of
    the voices (at least one each).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    try:
        from datasets import List
    except ImportError:  # datasets < 4
        from datasets import Sequence as List

    voices = list(VOICES if voices is None else voices)
    if num_voices is not None:
        if not 3 <= num_voices <= len(voices):
            raise ValueError(f"num_voices must be in [3, {len(voices)}], got {num_voices}")
        voices = sorted(random.Random(seed).sample(voices, num_voices), key=voices.index)
    folder = synthesise(voices, clips_per_voice, seed, cache_dir, workers, progress)
    clips = json.loads((folder / "manifest.json").read_text())["clips"]
    features = Features(
        {
            "audio": List(Value("float32")),
            "sampling_rate": Value("int32"),
            "label": ClassLabel(names=WORDS),
            "voice": Value("string"),
        }
    )
    splits = {}
    for name, members in split_voices(voices, seed, validation_fraction, test_fraction, holdout).items():
        members = set(members)
        rows = [c for c in clips if c["voice"] in members]
        splits[name] = Dataset.from_dict(
            {
                "audio": list_array([read_wav(folder / c["file"]) for c in rows]),
                "sampling_rate": [SAMPLE_RATE] * len(rows),
                "label": [WORDS.index(c["word"]) for c in rows],
                "voice": [c["voice"] for c in rows],
            },
            features=features,
        )
    return DatasetDict({name: splits[name] for name in ("train", "validation", "test")})
