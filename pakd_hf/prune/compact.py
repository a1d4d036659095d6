"""Physical compaction: remove masked heads, FFN neurons, layers and hidden dims in place.

    result = compact(model, mask_state_or_structure)

!!! Every sliced parameter is a NEW ``nn.Parameter`` afterwards: an optimizer (and LR
scheduler, and a DDP / accelerate wrapper) built before ``compact`` keeps stepping tensors that
are no longer in the model, silently. The caller MUST rebuild them after compaction. !!!

Slicing follows ``transformers.pytorch_utils.prune_linear_layer`` (``index_select`` along the
axis, bias only along the output axis) but keeps each module object, its dtype, device and
``requires_grad``, so references to modules (hooks, adapters, teacher/student maps) stay valid.
Embeddings, LayerNorms, Conv1d and Conv2d in/out channels, BatchNorms (with their running
statistics), raw parameters (ViT's
``cls_token`` / ``position_embeddings``) and the in channels of grouped convolutions
(``Cut.conv_groups``, e.g. wav2vec2's weight-normed positional conv) get the same treatment; a
``use_weighted_layer_sum`` weight vector (``ArchAdapter.layer_sum_weights``) loses the entries of
removed layers. Removed layers are deleted from the
``ModuleList`` and per-layer index attributes (BERT's ``layer_idx``) are renumbered; per-module
head attributes and the config (through the architecture adapter) are updated.

Unstructured / N:M masks are never compacted: a :class:`MaskState` passed in keeps its weight
masks, sliced and re-keyed to the compacted model, and stays usable (``apply`` /
``mask_gradients``) with no structural masks left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter, get_adapter
from ..arch.base import ROLES, is_rms_norm, weighted_layer_sum_keep
from ..arch.structure import Structure, relative_keep
from ..carried import active_masks
from .masks import MaskState, expand_units
from .structure import set_structure


@dataclass
class CompactResult:
    """What :func:`compact` did.

    ``structure``: the model's new record in ORIGINAL coordinates (which original layer /
    head / neuron / hidden indices survive; also attached to the model). ``removed``: units
    removed by this call per kind (heads and FFN neurons summed over surviving layers).
    ``params_before`` / ``params_after``: parameter counts. ``mask_state``: the MaskState that
    was passed in, rebased on the compacted model (weight masks kept), else ``None``.
    """

    structure: Structure
    removed: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    mask_state: MaskState | None = None


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _select_param(module: nn.Module, name: str, axis: int, index: torch.Tensor) -> None:
    old = getattr(module, name)
    new = old.detach().index_select(axis, index.to(old.device)).clone().contiguous()
    setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))


def _select_grouped_in(module: nn.Module, name: str, keep: list[int], conv_groups: int) -> None:
    """Keep the in channels ``keep`` (global indices) of a grouped conv weight ``[C_out, C_in/G, *k]``
    (see ``Cut.conv_groups``); every group must keep the same number of them."""
    old = getattr(module, name)
    G, c_out, n = conv_groups, old.shape[0], old.shape[1]
    per_group = [[d % n for d in keep if d // n == g] for g in range(G)]
    if len({len(c) for c in per_group}) != 1 or not per_group[0]:
        raise ValueError(
            f"a grouped convolution ({G} groups) keeps {[len(c) for c in per_group]} channels per group: every group "
            "must keep the same number (select hidden dims with the adapter: select_structure(..., adapter=...))"
        )
    rows = c_out // G
    w = old.detach()
    new = torch.cat([w[g * rows:(g + 1) * rows].index_select(1, torch.tensor(c, dtype=torch.long, device=w.device))
                     for g, c in enumerate(per_group)], 0)
    setattr(module, name, nn.Parameter(new.clone().contiguous(), requires_grad=old.requires_grad))


def _slice_module(module: nn.Module, axes: dict[int, torch.Tensor]) -> None:
    """Slice a Linear / Embedding / LayerNorm / RMSNorm / Conv1d / Conv2d along the given axes and fix its
    attributes."""
    if isinstance(module, nn.Linear):
        for axis, idx in axes.items():
            _select_param(module, "weight", axis, idx)
            if axis == 0 and module.bias is not None:
                _select_param(module, "bias", 0, idx)
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Embedding):
        _select_param(module, "weight", 1, axes[1])
        module.embedding_dim = module.weight.shape[1]
    elif isinstance(module, nn.LayerNorm):
        for name in ("weight", "bias"):
            if getattr(module, name) is not None:
                _select_param(module, name, 0, axes[0])
        module.normalized_shape = (len(axes[0]),)
    elif is_rms_norm(module):
        _select_param(module, "weight", 0, axes[0])
        if isinstance(module, nn.RMSNorm):
            module.normalized_shape = (len(axes[0]),)
    elif isinstance(module, nn.Conv1d):
        if module.groups != 1:
            raise TypeError("a grouped Conv1d is compacted through a conv_groups cut")
        for axis, idx in axes.items():
            _select_param(module, "weight", axis, idx)
            if axis == 0 and module.bias is not None:
                _select_param(module, "bias", 0, idx)
        module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1 and 1 in axes:
            raise TypeError("the in channels of a grouped Conv2d cannot be cut")
        for axis, idx in axes.items():
            _select_param(module, "weight", axis, idx)
            if axis == 0 and module.bias is not None:
                _select_param(module, "bias", 0, idx)
        module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        idx = axes[0]
        for name in ("weight", "bias"):
            if getattr(module, name) is not None:
                _select_param(module, name, 0, idx)
        for name in ("running_mean", "running_var"):  # buffers: eval-mode outputs depend on them
            buf = getattr(module, name)
            if buf is not None:
                setattr(module, name, buf.index_select(0, idx.to(buf.device)).clone())
        module.num_features = len(idx)
    else:
        raise TypeError(f"no compaction rule for {type(module).__name__}")


def compact(
    model: nn.Module,
    target: MaskState | Structure,
    *,
    adapter: ArchAdapter | None = None,
    check_export: bool = True,
) -> CompactResult:
    """Physically remove what ``target`` drops; returns a :class:`CompactResult`.

    ``target``: a :class:`MaskState` (its ``structure()``; its forward patches are removed and
    it is rebased) or a :class:`Structure` in original coordinates (a subset of the model's
    current record). With ``check_export`` (default) the structure must be expressible by the
    family's stock config (uniform; for BERT ``hidden == heads * head_dim``), else
    :class:`~pakd_hf.arch.HeadDimError` / :class:`~pakd_hf.arch.NonUniformStructureError` is
    raised before anything is touched; ``check_export=False`` compacts anyway (the in-memory
    model runs, the config holds the per-layer maxima and a stock reload would fail).

    REBUILD THE OPTIMIZER AND LR SCHEDULER AFTERWARDS: all sliced parameters are new tensors.
    """
    state = target if isinstance(target, MaskState) else None
    adapter = adapter or (state.adapter if state is not None else get_adapter(model))
    model = adapter.model
    base = Structure.from_model(model, adapter)
    structure = (state.structure() if state is not None else target).normalized()
    if check_export:
        adapter.check_structure(structure)
    adapter.check_compactable(structure)
    rel = relative_keep(base, structure)

    # forward patches of whatever mask state is attached go first
    active = active_masks(model)
    if active is not None and active is not state:
        active._mark_stale()
    if state is not None:
        state.detach()

    params_before = _num_params(model)
    cuts: dict[int, tuple[nn.Module, dict[int, torch.Tensor]]] = {}
    raw: list[tuple[nn.Module, str, int, torch.Tensor]] = []
    grouped: list[tuple[nn.Module, str, list[int], int]] = []

    def add(cut_list, keep_units: list[int], total: int) -> None:
        if len(keep_units) == total:
            return
        for cut in cut_list:
            units = cut.local(keep_units)  # the units this cut holds (Cut.offset / size), as its indices
            if cut.size is not None and len(units) == cut.size:
                continue  # this part of the kind keeps everything
            if cut.conv_groups > 1:
                grouped.append((cut.module, cut.name or "weight", expand_units(units, cut.group), cut.conv_groups))
                continue
            idx = torch.tensor(expand_units(units, cut.group), dtype=torch.long)
            if cut.name is not None:
                raw.append((cut.module, cut.name, cut.axis, idx))
                continue
            mod, axes = cuts.setdefault(id(cut.module), (cut.module, {}))
            if cut.axis in axes and not torch.equal(axes[cut.axis], idx):
                raise RuntimeError(f"conflicting cuts on {type(cut.module).__name__} axis {cut.axis}")
            axes[cut.axis] = idx

    layers = adapter.layer_list()
    kept_parts = []
    removed = {"layers": 0, "heads": 0, "ffn": 0, "hidden": 0}
    linear_keys: dict[int, str] = {}
    for j, layer in enumerate(layers):
        if not rel.layers[j]:
            removed["layers"] += 1
            continue
        parts = adapter.layer_parts(layer)
        kept_parts.append((j, parts))
        heads = [h for h, k in enumerate(rel.heads[j]) if k]
        ffn = [n for n, k in enumerate(rel.ffn[j]) if k]
        removed["heads"] += len(rel.heads[j]) - len(heads)
        removed["ffn"] += len(rel.ffn[j]) - len(ffn)
        add(adapter.head_cuts(j, parts), heads, len(rel.heads[j]))
        add(adapter.ffn_cuts(j, parts), ffn, len(rel.ffn[j]))
        if len(heads) != len(rel.heads[j]):
            adapter.set_num_heads(parts.attn, len(heads))
        if parts.attn is None:
            continue  # a family without attention (a CNN): no prunable Linears in its blocks
        for role, lin in zip(ROLES, (parts.attn.q, parts.attn.k, parts.attn.v, parts.attn.o, parts.fc1, parts.fc2)):
            linear_keys[id(lin)] = f"{j}.{role}"
    hidden = [d for d, k in enumerate(rel.hidden) if k]
    removed["hidden"] = len(rel.hidden) - len(hidden)
    if removed["hidden"]:
        hidden_cuts = list(adapter.head_cuts_outside_layers())
        for _, parts in kept_parts:
            hidden_cuts += adapter.layer_hidden_cuts(parts)
        add(hidden_cuts, hidden, len(rel.hidden))

    # unstructured masks follow the slicing of their weights
    weight_masks: dict[str, torch.Tensor] = {}
    if state is not None and state.weight_masks:
        lin_by_key = adapter.prunable_linears()
        for key, m in state.weight_masks.items():
            mod = lin_by_key[key]
            if id(mod) not in linear_keys:
                continue  # its layer is removed
            for axis, idx in cuts.get(id(mod), (None, {}))[1].items():
                m = m.index_select(axis, idx.to(m.device))
            weight_masks[key] = m

    lsw = adapter.layer_sum_weights() if removed["layers"] else None

    with torch.no_grad():
        for mod, name, keep, groups in grouped:  # before any out-channel cut of the same weight
            _select_grouped_in(mod, name, keep, groups)
        for mod, axes in cuts.values():
            _slice_module(mod, axes)
        for mod, name, axis, idx in raw:
            _select_param(mod, name, axis, idx)
        if lsw is not None:
            keep = weighted_layer_sum_keep([j for j, _ in kept_parts], len(rel.layers))
            _select_param(*lsw, 0, torch.tensor(keep, dtype=torch.long))

    if removed["layers"]:
        adapter.set_layer_list(nn.ModuleList([parts.layer for _, parts in kept_parts]))
    old_to_new = {}
    for new_i, (j, parts) in enumerate(kept_parts):
        adapter.set_layer_index(parts.layer, new_i)
        old_to_new[j] = new_i

    adapter.update_config(model.config, structure, strict=check_export)
    adapter.after_compact()
    set_structure(model, structure)

    if state is not None:
        rekeyed = {}
        for key, m in weight_masks.items():
            j, role = key.split(".", 1)
            rekeyed[f"{old_to_new[int(j)]}.{role}"] = m
        state._rebase(structure, rekeyed)
        if rekeyed:
            state.apply()

    return CompactResult(
        structure=structure,
        removed=removed,
        params_before=params_before,
        params_after=_num_params(model),
        mask_state=state,
    )


def describe_result(result: CompactResult) -> dict[str, Any]:
    """A JSON-able summary of a :class:`CompactResult` (for logs and pakd.json)."""
    return {
        "structure": result.structure.describe(),
        "removed": dict(result.removed),
        "params_before": result.params_before,
        "params_after": result.params_after,
    }
