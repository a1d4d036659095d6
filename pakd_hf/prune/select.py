"""From importance scores and targets to a new :class:`Structure`.

Scores are in the CURRENT model's coordinates (as :class:`ImportanceAccumulator` returns
them); ``base`` is the model's record (``Structure.from_model(model)``), which maps them to
original indices; ``within`` (default ``base``) limits the choice to units still kept, e.g. the
current mask's structure, so repeated selection under a schedule only removes units.

Targets per kind: ``None`` leaves the kind as in ``within``; an ``int`` is a count to keep; a
``float`` in ``[0, 1]`` is a FRACTION OF THE ORIGINAL size to keep, rounded up, never below 1.
Heads and FFN counts are per layer, layers and hidden counts are totals.
"""

from __future__ import annotations

import copy
import math

import torch

from ..arch import ArchAdapter
from ..arch.structure import Structure, from_relative, relative_keep


def _count(target: int | float | None, original: int, name: str) -> int | None:
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError(f"{name} target must be an int count or a float fraction, got a bool")
    if isinstance(target, float):
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"{name}: keep fraction must be in [0, 1], got {target}")
        return max(1, math.ceil(original * target - 1e-9))
    if target < 1:
        raise ValueError(f"{name}: must keep at least 1, got {target}")
    return int(target)


def _top(scores: torch.Tensor, allowed: list[int], k: int, what: str) -> list[int]:
    if k > len(allowed):
        raise ValueError(f"cannot keep {k} {what}: only {len(allowed)} are left")
    vals = scores[allowed].float()
    order = torch.sort(-vals, stable=True).indices[:k]  # ties: the lower index wins
    return sorted(allowed[i] for i in order.tolist())


def select_structure(
    scores: dict[str, torch.Tensor],
    base: Structure,
    *,
    within: Structure | None = None,
    heads: int | float | None = None,
    ffn: int | float | None = None,
    layers: int | float | None = None,
    hidden: int | float | None = None,
    uniform: bool = True,
    adapter: ArchAdapter | None = None,
    check_export: bool = True,
) -> Structure:
    """Keep the top-scoring units per kind.

    ``uniform=True``: every kept layer keeps the same number of heads (FFN neurons), its own
    top-k. ``uniform=False``: the per-layer count times the number of kept layers is a total
    budget, filled by global ranking across layers (each layer keeps at least one unit).
    Layers are selected first (top-k by ``scores["layers"]``), then heads / FFN within the kept
    layers, then hidden dims (top-k by ``scores["hidden"]``; with an ``adapter`` whose
    ``hidden_groups()`` is G > 1, e.g. wav2vec2's grouped positional conv, the top
    ``ceil(k / G)`` of each of the G contiguous groups).

    With ``adapter`` and ``check_export`` (default), the result is checked against the family's
    stock config (``adapter.check_structure``): e.g. BERT raises
    :class:`~pakd_hf.arch.HeadDimError` when ``hidden != heads * head_dim`` ("head_dim not
    dividing"). Pass ``check_export=False`` for intermediate mask states of a schedule.
    """
    if adapter is not None:  # a kind the family cannot prune: one line naming what it can
        adapter.check_kinds([k for k, v in (("heads", heads), ("ffn", ffn), ("layers", layers), ("hidden", hidden))
                             if v is not None])
    within = copy.deepcopy(within or base)
    rel = relative_keep(base, within)  # flags of `within` in current coordinates
    L = len(base.layers)

    def need(kind):
        if kind not in scores:
            raise KeyError(f"no {kind!r} scores (have {sorted(scores)}); add the kind to the accumulator")
        return scores[kind]

    layer_flags = list(rel.layers)
    n_layers = _count(layers, base.num_layers, "layers")
    if n_layers is not None:
        required = [j for j in (adapter.required_layers() if adapter is not None else []) if rel.layers[j]]
        if n_layers < len(required):
            raise ValueError(f"cannot keep {n_layers} layers: {len(required)} layers of {adapter.description} "
                             "always stay (its required_layers(), e.g. the first block of each stage)")
        allowed = [j for j in range(L) if rel.layers[j] and j not in required]
        kept = set(required) | set(_top(need("layers"), allowed, n_layers - len(required), "layers"))
        layer_flags = [j in kept for j in range(L)]

    def per_layer_select(kind, target, original, flags):
        n = _count(target, original, kind)
        if n is None:
            return flags
        s = need(kind)
        out = [list(f) for f in flags]
        kept_layers = [j for j in range(L) if layer_flags[j]]
        if uniform:
            for j in kept_layers:
                allowed = [u for u, f in enumerate(flags[j]) if f]
                kept = set(_top(s[j], allowed, n, f"{kind} in layer {base.layers[j]}"))
                out[j] = [u in kept for u in range(len(flags[j]))]
            return out
        budget = n * len(kept_layers)
        cand = [(j, u) for j in kept_layers for u, f in enumerate(flags[j]) if f]
        if budget > len(cand):
            raise ValueError(f"cannot keep {budget} {kind} in total: only {len(cand)} are left")
        chosen = set()
        for j in kept_layers:  # the best unit of every layer first: no layer ends up empty
            allowed = [u for u, f in enumerate(flags[j]) if f]
            chosen.add((j, _top(s[j], allowed, 1, kind)[0]))
        rest = sorted((c for c in cand if c not in chosen), key=lambda c: -float(s[c[0]][c[1]]))
        chosen |= set(rest[: max(0, budget - len(chosen))])
        for j in kept_layers:
            out[j] = [(j, u) in chosen for u in range(len(flags[j]))]
        return out

    head_flags = per_layer_select("heads", heads, base.num_heads, rel.heads)
    ffn_flags = per_layer_select("ffn", ffn, base.intermediate_size, rel.ffn)

    hidden_flags = list(rel.hidden)
    n_hidden = _count(hidden, base.hidden_size, "hidden")
    if n_hidden is not None:
        groups = adapter.hidden_groups() if adapter is not None else 1
        segments = adapter.hidden_segments() if adapter is not None else None
        if segments is not None:
            # separate residual streams (a CNN's stages): each keeps its share of the count
            total = len(rel.hidden)
            kept = set()
            for start, stop, minimum in segments:
                size = stop - start
                per = min(size, max(minimum, math.ceil(n_hidden * size / total - 1e-9)))
                allowed = [d for d in range(start, stop) if rel.hidden[d]]
                kept |= set(_top(need("hidden"), allowed, per, f"hidden dims of stream {start}..{stop - 1}"))
        elif groups > 1:
            # a grouped conv over the residual width: the same number of dims in every
            # (contiguous) group, the count rounded up to a multiple of the groups
            size = len(rel.hidden) // groups
            per = -(-n_hidden // groups)
            kept = set()
            for g in range(groups):
                allowed = [d for d in range(g * size, (g + 1) * size) if rel.hidden[d]]
                kept |= set(_top(need("hidden"), allowed, per, f"hidden dims in group {g} of {groups}"))
        else:
            allowed = [d for d, f in enumerate(rel.hidden) if f]
            kept = set(_top(need("hidden"), allowed, n_hidden, "hidden dims"))
        hidden_flags = [d in kept for d in range(len(rel.hidden))]
        if adapter is not None and adapter.ffn_follows_hidden:
            # the config derives the FFN width from the hidden one (a CNN block's inner channels)
            s = need("ffn")
            tied = adapter.ffn_keep_for_hidden(hidden_flags)
            ffn_flags = [list(f) for f in ffn_flags]
            for j in range(L):
                if not layer_flags[j]:
                    continue
                new = [False] * len(ffn_flags[j])
                for start, stop, k in tied[j]:
                    allowed = [u for u in range(start, stop) if ffn_flags[j][u]]
                    for u in _top(s[j], allowed, k, f"ffn units {start}..{stop - 1} in layer {base.layers[j]}"):
                        new[u] = True
                ffn_flags[j] = new

    result = from_relative(base, layer_flags, head_flags, ffn_flags, hidden_flags)
    if adapter is not None and check_export:
        adapter.check_structure(result)
    return result


def unit_costs(base: Structure, within: Structure | None = None, *, metric: str = "params",
               seq_len: int = 128) -> dict[str, float]:
    """Cost of one head / one FFN neuron at the widths of ``within`` (default ``base``).

    ``params``: head ``4*D*d + 3*d`` (q/k/v rows with biases, o columns), neuron ``2*D + 1``.
    ``macs`` (per token): head ``4*D*d + 2*seq_len*d`` (projections, scores, weighted sum),
    neuron ``2*D``. ``D`` = kept hidden size, ``d`` = head_dim."""
    s = within or base
    D, d = len(s.hidden), s.head_dim
    if metric == "params":
        return {"heads": 4 * D * d + 3 * d, "ffn": 2 * D + 1}
    if metric == "macs":
        return {"heads": 4 * D * d + 2 * seq_len * d, "ffn": 2 * D}
    raise ValueError(f"metric must be 'params' or 'macs', got {metric!r}")


def select_global(
    scores: dict[str, torch.Tensor],
    base: Structure,
    *,
    total: float,
    keep: float,
    within: Structure | None = None,
    metric: str = "params",
    seq_len: int = 128,
) -> Structure:
    """Global budget: prune heads and FFN neurons across all layers until the model's cost
    drops to ``keep * total``. ``total``: the current model's parameter count
    (``measure.count_params(model)``) for ``metric="params"``; for ``metric="macs"`` its MACs
    per token, ``measure.count_macs(model, inputs) / (batch * seq_len)`` with the same
    ``seq_len`` (the per-unit costs of :func:`unit_costs` then match the counter exactly).

    Heuristic (greedy, one pass): each unit's *importance density* is its share of its kind's
    total score divided by its share of its kind's total cost (:func:`unit_costs`, at the
    current widths, not updated as units go); units are removed in increasing density until
    the budget is met, never the last head / neuron of a layer. Movement scores are shifted to
    be non-negative first. Layers and hidden dims are not part of the global mode, and the
    result is usually non-uniform (not exportable to a stock config).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    within = copy.deepcopy(within or base)
    rel = relative_keep(base, within)
    costs = unit_costs(base, within, metric=metric, seq_len=seq_len)
    L = len(base.layers)
    current = float(total)
    for j in range(L):  # units already masked in `within` are not counted
        if rel.layers[j]:
            current -= costs["heads"] * rel.heads[j].count(False) + costs["ffn"] * rel.ffn[j].count(False)
    budget = keep * float(total)
    if current <= budget:
        return within

    cand = []
    for kind, flags in (("heads", rel.heads), ("ffn", rel.ffn)):
        s = scores[kind].float()
        units = [(j, u) for j in range(L) if rel.layers[j] for u, f in enumerate(flags[j]) if f]
        if not units:
            continue
        vals = torch.tensor([float(s[j][u]) for j, u in units])
        vals = vals - min(0.0, float(vals.min()))
        share = vals / max(float(vals.sum()), 1e-30)
        density = share / (1.0 / len(units))  # equal costs within a kind: cost share = 1/n
        cand += [(float(dn), kind, j, u) for dn, (j, u) in zip(density, units)]
    cand.sort(key=lambda c: (c[0], c[1], c[2], c[3]))

    flags = {"heads": [list(f) for f in rel.heads], "ffn": [list(f) for f in rel.ffn]}
    for _, kind, j, u in cand:
        if current <= budget:
            break
        if sum(flags[kind][j]) <= 1:
            continue
        flags[kind][j][u] = False
        current -= costs[kind]
    if current > budget:
        raise ValueError(f"cannot reach {keep:.0%} of {total:.0f} by pruning heads and FFN neurons: "
                         f"the floor is {current:.0f} ({current / total:.0%}); prune layers or the hidden size too")
    return from_relative(base, rel.layers, flags["heads"], flags["ffn"], rel.hidden)
