"""A global budget for uniform pruning: keep a fraction of the parameters (or MACs).

With ``uniform: true`` every layer keeps the same shape, so a budget is a question of one
number: the share ``f`` of each listed kind to keep (heads, FFN neurons, layers, hidden
dims; each count = ceil(f * current count)). The largest ``f`` whose model fits the budget
is found by bisection; each candidate is costed on a model built on the ``meta`` device
from the candidate config (no memory, milliseconds), so the count is exact, embeddings and
task head included. For BERT-like families whose config ties ``hidden = heads * head_dim``,
a candidate that prunes both keeps them tied.

Non-uniform budgets (ranking units across layers) live in :func:`select.select_global`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..arch import HeadDimError
from ..arch.structure import Structure
from ..measure import prefill_kwargs

KINDS = ("heads", "ffn", "layers", "hidden")


def _structure_with_counts(original: Structure, counts: dict[str, int]) -> Structure:
    n_layers = counts.get("layers", original.num_layers)
    heads = counts.get("heads", original.num_heads)
    ffn = counts.get("ffn", original.intermediate_size)
    hidden = counts.get("hidden", original.hidden_size)
    return Structure(
        original.num_layers, original.num_heads, original.head_dim, original.intermediate_size, original.hidden_size,
        layers=list(range(n_layers)),
        heads=[list(range(heads)) if i < n_layers else [] for i in range(original.num_layers)],
        ffn=[list(range(ffn)) if i < n_layers else [] for i in range(original.num_layers)],
        hidden=list(range(hidden)),
    )


def model_cost(model: nn.Module, adapter, structure: Structure, metric: str, inputs: dict | None) -> float:
    """Parameters (or MACs on ``inputs``) of ``model``'s family at ``structure``, on meta."""
    config = copy.deepcopy(model.config)
    adapter.update_config(config, structure, strict=False)
    with torch.device("meta"):
        shadow = type(model)(config)
    if metric == "params":
        return float(sum(p.numel() for p in shadow.parameters()))
    from torch.utils.flop_counter import FlopCounterMode

    # The attention mask's values do not change the MACs, and building the extended mask reads
    # them (.item()), which meta tensors cannot do.
    inputs = {k: v for k, v in (inputs or {}).items() if k != "attention_mask" and torch.is_tensor(v)}
    # A causal LM's MACs are its prefill's, as generate() runs it and the report counts them.
    extra = prefill_kwargs(model)

    def count(net: nn.Module, device: str) -> float:
        if hasattr(net, "set_attn_implementation"):
            net.set_attn_implementation("eager")
        net.eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(**{k: torch.zeros_like(v, device=device) for k, v in inputs.items()}, **extra)
        return counter.get_total_flops() / 2

    try:
        return count(shadow, "meta")
    except (RuntimeError, NotImplementedError):
        return count(type(model)(config), "cpu")  # a model whose forward needs real values


def counts_for_budget(
    model: nn.Module,
    adapter,
    current: Structure,
    *,
    kinds: list[str],
    keep: float,
    metric: str = "params",
    fixed: dict[str, int] | None = None,
    inputs: dict | None = None,
) -> dict[str, int]:
    """The uniform counts of ``kinds`` that keep at most ``keep`` of the ORIGINAL model's
    parameters (or MACs), as large as possible. ``fixed`` holds explicit targets of other kinds.

    Raises ValueError when even keeping one unit of each listed kind exceeds the budget.
    """
    if metric == "macs" and not inputs:
        raise ValueError("a MACs budget needs sample inputs to count on")
    fixed = dict(fixed or {})
    original = Structure.full(*current.original_sizes())
    limit = keep * model_cost(model, adapter, original, metric, inputs)
    have = {
        "heads": max(current.heads_per_layer()),
        "ffn": max(current.ffn_per_layer()),
        "layers": len(current.layers),
        "hidden": len(current.hidden),
    }

    def candidate(f: float) -> dict[str, int]:
        counts = dict(fixed)
        for kind in kinds:
            counts[kind] = max(1, math.ceil(f * have[kind] - 1e-9))
        structure = _structure_with_counts(original, counts)
        try:
            adapter.check_structure(structure)
        except HeadDimError:
            heads = counts.get("heads", have["heads"])
            counts["hidden"] = heads * original.head_dim  # families that tie hidden to heads
        return counts

    def cost(counts: dict[str, int]) -> float:
        return model_cost(model, adapter, _structure_with_counts(original, counts), metric, inputs)

    smallest = candidate(0.0)
    if cost(smallest) > limit:
        raise ValueError(
            f"a {metric} budget of {keep:g} cannot be met by pruning {', '.join(kinds)} alone "
            f"(one unit each still costs {cost(smallest) / (limit / keep):.3f} of the original); "
            "add kinds to the budget or lower other targets"
        )
    lo, hi = 0.0, 1.0
    if cost(candidate(hi)) <= limit:
        return candidate(hi)
    for _ in range(30):
        mid = (lo + hi) / 2
        if cost(candidate(mid)) <= limit:
            lo = mid
        else:
            hi = mid
    return candidate(lo)
