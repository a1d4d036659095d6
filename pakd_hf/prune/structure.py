"""The structure record: which ORIGINAL heads, FFN neurons, layers and hidden dims survive.

A :class:`Structure` is always expressed in the coordinates of the original (unpruned) model,
so it composes across stages and becomes ``pakd.json``'s ``structure`` record. A model that
was compacted carries its record (``Structure.from_model`` reads it back); a model without one
is taken as its own original.

Also here: ``pakd.json`` writing/reading and :func:`verify_against_config`, which checks a
saved folder's tensor shapes against its ``config.json`` (and ``pakd.json``) without loading a
model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .carried import active_masks, set_structure_record, structure_record

PAKD_JSON = "pakd.json"
PAKD_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A saved folder whose tensors contradict its config.json or pakd.json."""


@dataclass
class Structure:
    """Kept units per kind, as sorted ORIGINAL indices.

    ``num_layers``/``num_heads``/``head_dim``/``intermediate_size``/``hidden_size`` are the
    original sizes. ``heads[l]`` and ``ffn[l]`` are given for every original layer ``l`` (empty
    for a removed layer); ``layers`` lists the kept original layers; ``hidden`` the kept
    residual-stream dims. ``num_heads == 0``: a family without attention heads (a CNN); its
    head lists are all empty.
    """

    num_layers: int
    num_heads: int
    head_dim: int
    intermediate_size: int
    hidden_size: int
    layers: list[int] = field(default_factory=list)
    heads: list[list[int]] = field(default_factory=list)
    ffn: list[list[int]] = field(default_factory=list)
    hidden: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = sorted(int(i) for i in self.layers)
        self.hidden = sorted(int(i) for i in self.hidden)
        self.heads = [sorted(int(h) for h in hs) for hs in self.heads]
        self.ffn = [sorted(int(n) for n in ns) for ns in self.ffn]
        self.validate()

    # ------------------------------------------------------------ constructors
    @classmethod
    def full(cls, num_layers: int, num_heads: int, head_dim: int, intermediate_size: int, hidden_size: int):
        return cls(
            num_layers, num_heads, head_dim, intermediate_size, hidden_size,
            layers=list(range(num_layers)),
            heads=[list(range(num_heads)) for _ in range(num_layers)],
            ffn=[list(range(intermediate_size)) for _ in range(num_layers)],
            hidden=list(range(hidden_size)),
        )

    @classmethod
    def from_model(cls, model, adapter=None) -> Structure:
        """The model's current record: what a previous :func:`compact` left (original
        coordinates), or "everything kept" for a model never compacted."""
        rec = structure_record(model)
        if rec is not None:
            return copy.deepcopy(rec)
        from ..arch import get_adapter

        a = adapter or get_adapter(model)
        full = a.full_structure()  # families whose layers differ in shape by design (CNN stages)
        if full is not None:
            return full
        L = a.num_layers
        heads = [a.num_heads(i) for i in range(L)]
        ffn = [a.intermediate_size(i) for i in range(L)]
        if len(set(heads)) > 1 or len(set(ffn)) > 1:
            raise ValueError(
                "the model has layers of different shapes but no pakd structure record: attach the record "
                "from its pakd.json with set_structure(model, load_structure(folder))"
            )
        return cls.full(L, heads[0] if L else 0, a.head_dim(), ffn[0] if L else 0, a.hidden_size())

    # -------------------------------------------------------------- properties
    def validate(self) -> None:
        L = self.num_layers
        if len(self.heads) != L or len(self.ffn) != L:
            raise ValueError(f"structure has {len(self.heads)} head lists / {len(self.ffn)} ffn lists for {L} layers")
        bad = [i for i in self.layers if not 0 <= i < L]
        if bad:
            raise ValueError(f"structure keeps layers {bad} outside 0..{L - 1}")
        for i in self.layers:
            if any(not 0 <= h < self.num_heads for h in self.heads[i]):
                raise ValueError(f"layer {i} keeps heads outside 0..{self.num_heads - 1}")
            if any(not 0 <= n < self.intermediate_size for n in self.ffn[i]):
                raise ValueError(f"layer {i} keeps FFN neurons outside 0..{self.intermediate_size - 1}")
            if (self.num_heads and not self.heads[i]) or not self.ffn[i]:
                raise ValueError(f"layer {i} is kept but keeps no heads or no FFN neurons; drop the layer instead")
        if not self.hidden or any(not 0 <= d < self.hidden_size for d in self.hidden):
            raise ValueError(f"structure keeps hidden dims outside 0..{self.hidden_size - 1} (or none)")
        if not self.layers:
            raise ValueError("structure keeps no layers")

    def heads_per_layer(self) -> list[int]:
        """Kept head count of each kept layer (in kept-layer order)."""
        return [len(self.heads[i]) for i in self.layers]

    def ffn_per_layer(self) -> list[int]:
        return [len(self.ffn[i]) for i in self.layers]

    def is_uniform(self) -> bool:
        """Every kept layer keeps the same number of heads and of FFN neurons."""
        return len(set(self.heads_per_layer())) <= 1 and len(set(self.ffn_per_layer())) <= 1

    def is_full(self) -> bool:
        return self == Structure.full(self.num_layers, self.num_heads, self.head_dim, self.intermediate_size,
                                      self.hidden_size)

    def is_subset_of(self, other: Structure) -> bool:
        if self.original_sizes() != other.original_sizes():
            return False
        if not set(self.layers) <= set(other.layers) or not set(self.hidden) <= set(other.hidden):
            return False
        return all(set(self.heads[i]) <= set(other.heads[i]) and set(self.ffn[i]) <= set(other.ffn[i])
                   for i in self.layers)

    def original_sizes(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, self.num_heads, self.head_dim, self.intermediate_size, self.hidden_size)

    def normalized(self) -> Structure:
        """A copy with empty head/FFN lists for removed layers."""
        keep = set(self.layers)
        return Structure(
            *self.original_sizes(), layers=self.layers, hidden=self.hidden,
            heads=[h if i in keep else [] for i, h in enumerate(self.heads)],
            ffn=[f if i in keep else [] for i, f in enumerate(self.ffn)],
        )

    def counts(self) -> dict[str, Any]:
        return {
            "layers": len(self.layers),
            "heads": self.heads_per_layer(),
            "ffn": self.ffn_per_layer(),
            "hidden": len(self.hidden),
        }

    def describe(self) -> str:
        c = self.counts()
        h = c["heads"][0] if len(set(c["heads"])) == 1 else c["heads"]
        f = c["ffn"][0] if len(set(c["ffn"])) == 1 else c["ffn"]
        return (f"layers {c['layers']}/{self.num_layers}, heads {h}/{self.num_heads}, "
                f"ffn {f}/{self.intermediate_size}, hidden {c['hidden']}/{self.hidden_size}")

    # --------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        s = self.normalized()
        return {
            "original": {
                "num_layers": s.num_layers, "num_heads": s.num_heads, "head_dim": s.head_dim,
                "intermediate_size": s.intermediate_size, "hidden_size": s.hidden_size,
            },
            "uniform": s.is_uniform(),
            "layers": s.layers,
            "heads": s.heads,
            "ffn": s.ffn,
            "hidden": s.hidden,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Structure:
        o = d["original"]
        return cls(o["num_layers"], o["num_heads"], o["head_dim"], o["intermediate_size"], o["hidden_size"],
                   layers=d["layers"], heads=d["heads"], ffn=d["ffn"], hidden=d["hidden"])


def set_structure(model, structure: Structure | None) -> None:
    """Attach a structure record to ``model`` (e.g. after reloading a pruned checkpoint)."""
    set_structure_record(model, None if structure is None else copy.deepcopy(structure))


# ---------------------------------------------------------------- pakd.json
def write_pakd_json(folder, structure: Structure, *, architecture: str, family: str,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/pakd.json`` = {"format": 1, "architecture", "family", "structure", **extra}."""
    rec = {"format": PAKD_FORMAT, "architecture": architecture, "family": family,
           "structure": structure.to_dict()}
    for k, v in (extra or {}).items():
        if k in rec:
            raise ValueError(f"pakd.json key {k!r} is reserved")
        rec[k] = v
    path = Path(folder) / PAKD_JSON
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return path


def read_pakd_json(folder) -> dict[str, Any]:
    """The raw ``pakd.json`` dict (``format`` checked); see :func:`load_structure`."""
    path = Path(folder) / PAKD_JSON
    rec = json.loads(path.read_text())
    if rec.get("format") != PAKD_FORMAT:
        raise CheckpointMismatchError(f"{path}: unknown pakd.json format {rec.get('format')!r} (expected 1)")
    return rec


def load_structure(folder) -> Structure:
    return Structure.from_dict(read_pakd_json(folder)["structure"])


def save_pruned(model, folder, *, extra: dict[str, Any] | None = None, **save_kwargs) -> Path:
    """``model.save_pretrained(folder)`` + ``pakd.json`` + :func:`verify_against_config`.

    The model must be compacted (no masks installed); its config must describe it (a stock
    ``from_pretrained`` reloads the folder).
    """
    from ..arch import get_adapter

    adapter = get_adapter(model)
    structure = Structure.from_model(model, adapter)
    state = active_masks(model)
    if state is not None and state.target != state.base:
        raise ValueError("the model still has structural masks: compact(model, mask_state) before saving "
                         "(unstructured / N:M masks are fine: they are saved as dense zeros)")
    folder = Path(folder)
    model.save_pretrained(folder, **save_kwargs)
    write_pakd_json(folder, structure, architecture=type(model).__name__, family=adapter.family, extra=extra)
    verify_against_config(folder)
    return folder


def _tensor_shapes(folder: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointMismatchError(f"{folder}: no *.safetensors file")
    shapes: dict[str, list[int]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                shapes[k] = list(fh.get_slice(k).get_shape())
    return shapes


def verify_against_config(folder) -> None:
    """Raise :class:`CheckpointMismatchError` when the saved tensors contradict ``config.json``
    (per-layer q/o/FFN shapes, layer count, hidden width) or, when present, ``pakd.json``
    (kept layer/head/FFN/hidden counts, uniformity). Reads shapes with ``safe_open``; no model
    is built."""
    from ..arch import adapter_class_for_model_type

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    cls = adapter_class_for_model_type(config.get("model_type", "?"))
    problems = [f"config.json vs tensors: {p}" for p in cls.checkpoint_problems(config, _tensor_shapes(folder))]
    if (folder / PAKD_JSON).exists():
        rec = read_pakd_json(folder)
        s = Structure.from_dict(rec["structure"])
        if rec.get("family") not in (None, cls.family):
            problems.append(f"pakd.json family {rec.get('family')!r} but config model_type {config['model_type']!r}")
        problems += cls.structure_problems(config, s)  # default: uniform counts == the config's fields
    if problems:
        raise CheckpointMismatchError(f"{folder}: " + "; ".join(problems))


# ------------------------------------------------------------ coordinates
@dataclass
class RelativeKeep:
    """``target`` expressed in the CURRENT model's coordinates (the model's record ``base``):
    boolean keep flags per current layer / head / neuron / hidden dim."""

    layers: list[bool]
    heads: list[list[bool]]
    ffn: list[list[bool]]
    hidden: list[bool]


def relative_keep(base: Structure, target: Structure) -> RelativeKeep:
    """Map ``target`` (original coordinates) onto a model whose record is ``base``.

    Raises ``ValueError`` when ``target`` keeps a unit the model no longer has."""
    if base.original_sizes() != target.original_sizes():
        raise ValueError(f"structures of different original models: {base.original_sizes()} vs "
                         f"{target.original_sizes()}")
    if not target.is_subset_of(base):
        raise ValueError("the target structure keeps units that the model no longer has "
                         f"(model: {base.describe()}; target: {target.describe()})")
    keep_layers = set(target.layers)
    layers = [l in keep_layers for l in base.layers]
    heads = [[h in set(target.heads[l]) for h in base.heads[l]] for l in base.layers]
    ffn = [[n in set(target.ffn[l]) for n in base.ffn[l]] for l in base.layers]
    th = set(target.hidden)
    return RelativeKeep(layers, heads, ffn, [d in th for d in base.hidden])


def from_relative(base: Structure, layers, heads, ffn, hidden) -> Structure:
    """Inverse of :func:`relative_keep`: current-coordinate keep flags -> original coordinates.

    ``heads``/``ffn`` are per CURRENT layer sequences of flags (a dropped layer's flags are
    ignored)."""
    kept_layers = [l for l, k in zip(base.layers, layers) if k]
    new_heads = [[] for _ in range(base.num_layers)]
    new_ffn = [[] for _ in range(base.num_layers)]
    for j, l in enumerate(base.layers):
        if layers[j]:
            new_heads[l] = [h for h, k in zip(base.heads[l], heads[j]) if k]
            new_ffn[l] = [n for n, k in zip(base.ffn[l], ffn[j]) if k]
    return Structure(*base.original_sizes(), layers=kept_layers, heads=new_heads, ffn=new_ffn,
                     hidden=[d for d, k in zip(base.hidden, hidden) if k])
