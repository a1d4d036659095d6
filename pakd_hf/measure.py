"""Size and cost of a model: parameters, saved bytes, MACs, per-layer structure.

- :func:`count_params` / :func:`param_counts`: unique parameters (tied weights once);
  "non-embedding" leaves out the token / position lookup tables named by the architecture
  adapter (BERT: word, position, token_type embeddings; ViT: ``cls_token`` and
  ``position_embeddings``; the patch projection conv counts as compute).
- :func:`safetensors_bytes`: the sum of ``*.safetensors`` file sizes in a saved folder.
- :func:`count_macs`: MACs of one forward on given inputs, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2). SDPA attention on CPU is
  invisible to the counter, so the count runs with eager attention (restored afterwards).
  Masked (not compacted) units still count: only compaction removes compute; a masked layer
  whose forward is patched out does not count.
- :func:`prefill_kwargs`: what a causal LM's forward is given to run as ``generate()``'s
  prefill (the LM head on the last position only); the benchmark, the report's MACs and the
  budget's MACs all count a decoder this way.
- :func:`structure_summary`: per-layer heads / head_dim / FFN width / hidden width (and the
  original layer index when the model carries a pakd structure record).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def count_params(model: nn.Module, *, non_embedding: bool = False) -> int:
    """Number of unique parameters (optionally without the embedding lookup tables)."""
    total = sum(p.numel() for p in model.parameters())
    if not non_embedding:
        return total
    from .arch import get_adapter

    emb = {id(p): p.numel() for p in get_adapter(model).embedding_parameters()}
    return total - sum(emb.values())


def param_counts(model: nn.Module) -> dict[str, int]:
    """``{"total": ..., "non_embedding": ...}``."""
    return {"total": count_params(model), "non_embedding": count_params(model, non_embedding=True)}


def safetensors_bytes(folder) -> int:
    """Sum of the sizes of ``folder/*.safetensors`` (raises if there is none)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {folder}")
    return sum(f.stat().st_size for f in files)


def prefill_kwargs(model: nn.Module) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` for a model whose forward takes it (transformers' causal LMs),
    else ``{}``. generate() computes next-token logits of the last position only; over every
    position, a large vocabulary's LM head would dominate both the timing and the MACs."""
    import inspect

    forward = getattr(model, "forward", None)
    try:
        accepts = forward is not None and "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature
        accepts = False
    return {"logits_to_keep": 1} if accepts else {}


@torch.no_grad()
def count_macs(model: nn.Module, inputs: Any) -> int:
    """MACs of ``model(**inputs)`` (or ``model(inputs)`` for a tensor): FLOPs / 2.

    Counted in the model's current train/eval mode; attention is switched to eager for the
    count (SDPA kernels are not seen by the counter on CPU) and switched back."""
    from torch.utils.flop_counter import FlopCounterMode

    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    switched = False
    if impl not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
        switched = True
    try:
        with FlopCounterMode(display=False) as counter:
            if isinstance(inputs, dict):
                model(**inputs)
            else:
                model(inputs)
        return int(counter.get_total_flops()) // 2
    finally:
        if switched:
            model.set_attn_implementation(impl)


def structure_summary(model: nn.Module) -> list[dict[str, int]]:
    """One dict per layer: ``layer``, ``original_layer``, ``heads``, ``head_dim``, ``ffn``, ``hidden``."""
    from .arch import get_adapter
    from .arch.structure import Structure

    a = get_adapter(model)
    record = Structure.from_model(model, a)
    hd = a.head_dim()
    rows = []
    for i, parts in enumerate(a.layers()):
        rows.append({
            "layer": i,
            "original_layer": record.layers[i],
            "heads": parts.attn.q.out_features // hd,
            "head_dim": hd,
            "ffn": parts.fc1.out_features,
            "hidden": parts.attn.q.in_features,
        })
    return rows


def format_summary(model: nn.Module) -> str:
    """:func:`structure_summary` and :func:`param_counts` as a small text table."""
    rows = structure_summary(model)
    pc = param_counts(model)
    lines = [f"{type(model).__name__}: {pc['total']:,} params ({pc['non_embedding']:,} non-embedding)",
             "layer (orig)  heads x dim   ffn  hidden"]
    for r in rows:
        lines.append(f"{r['layer']:>5} ({r['original_layer']:>4})  {r['heads']:>5} x {r['head_dim']:<3}"
                     f" {r['ffn']:>5}  {r['hidden']:>6}")
    return "\n".join(lines)
