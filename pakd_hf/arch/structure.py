"""The structure record: which ORIGINAL heads, FFN neurons, layers and hidden dims a model keeps.

A :class:`Structure` is always expressed in the coordinates of the original (unpruned) model,
so it composes across stages and becomes ``pakd.json``'s ``structure`` record. A model that
was compacted carries its record (``Structure.from_model`` reads it back); a model without one
is taken as its own original.

It lives in ``arch/`` because the adapters both make it (a family's full structure) and read
it (the config and shapes a structure leaves); the pruning engine (``pakd_hf.prune``) builds on
it. Saving and checking it on disk (``pakd.json``) is :mod:`pakd_hf.prune.structure`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..carried import structure_record
from . import get_adapter

__all__ = ["Structure", "RelativeKeep", "relative_keep", "from_relative"]


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
