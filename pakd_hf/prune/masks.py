"""Pruning as masks: during a stage nothing is removed, masked units are held at exactly zero.

:class:`MaskState` holds the target :class:`~pakd_hf.prune.structure.Structure` (structured
masks: heads, FFN neurons, layers, hidden dims) plus per-weight boolean masks (unstructured or
N:M) on the blocks' Linear weights. The trainer's contract, once per optimizer step::

    acc.update()                 # importance (optional), grads populated
    state.mask_gradients()       # before optimizer.step(): masked grads -> 0
    optimizer.step()
    state.apply()                # after the step: masked weights/biases -> 0 (exact, even with
                                 # AdamW momentum / weight decay) and forward hooks installed

Masked == compacted (logits within float noise) needs more than zeros, so ``apply`` / ``attach``
install two kinds of forward patches, which stay installed while the state is attached and are
removed by :meth:`MaskState.detach` and by :func:`~pakd_hf.prune.compact.compact`:

- a masked LAYER gets an instance-level ``forward`` returning its input unchanged (post-LN
  BERT computes ``LN(x + bias)`` from zeroed weights, which is not the identity; the layer's
  computation is skipped altogether, so under DDP use ``find_unused_parameters=True``);
- with hidden dims masked, every LayerNorm (or RMSNorm) over the residual width gets a forward
  hook that recomputes it with mean/variance (or mean square) over the KEPT dims only (zeros
  elsewhere).

With a softmax-weighted sum over the hidden states (``use_weighted_layer_sum``; see
``ArchAdapter.layer_sum_weights``), the entries that compaction drops with masked layers are
held at ``-inf`` (softmax weight exactly 0; their gradients are zeroed), not at zero.

Heads and FFN neurons need no hook: zero q/k/v rows+biases and o columns give a head whose
(uniform) attention reads v = 0; zero fc1 rows+bias and fc2 columns give act(0) = 0 for GELU,
ReLU, SiLU. Attention scaling uses head_dim, which no pruning kind changes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchAdapter, get_adapter
from ..arch.base import is_rms_norm, rms_norm_eps, weighted_layer_sum_keep
from ..arch.structure import Structure, relative_keep
from ..carried import active_masks, clear_active_masks, set_active_masks



def expand_units(idx: list[int], group: int) -> list[int]:
    return [i * group + j for i in idx for j in range(group)] if group > 1 else list(idx)


def _grouped_keep_mask(p: torch.Tensor, drop: list[int], conv_groups: int) -> torch.Tensor:
    """Keep mask (shape of ``p``) of a grouped conv weight ``[C_out, C_in/G, *k]`` without the
    in channels ``drop`` (global in-channel indices; see ``Cut.conv_groups``)."""
    G = conv_groups
    c_out, n = p.shape[0], p.shape[1]
    m = torch.ones(G, c_out // G, n, *p.shape[2:], dtype=torch.bool, device=p.device)
    for d in drop:
        m[d // n, :, d % n] = False
    return m.reshape(p.shape)


class MaskState:
    """Masks of one model (see module docs for the call order).

    Structured masks are given as a target ``Structure`` in ORIGINAL coordinates
    (:meth:`set_structure`); per-weight masks as ``{"<layer>.<role>": bool tensor}`` with roles
    ``q k v o fc1 fc2`` (:meth:`set_weight_masks`; ``True`` = keep). Combined, a weight entry is
    live only when both keep it.
    """

    def __init__(self, model: nn.Module, adapter: ArchAdapter | None = None):
        self.adapter = adapter or get_adapter(model)
        self.model = self.adapter.model
        self.base = Structure.from_model(self.model, self.adapter)
        self.target = copy.deepcopy(self.base)
        self.weight_masks: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._skipped: list[nn.Module] = []
        self._plan: list[tuple[nn.Parameter, int, torch.Tensor]] | None = None
        self._stale: str | None = None

    # ---------------------------------------------------------------- setters
    def set_structure(self, structure: Structure) -> None:
        """Mask everything ``structure`` drops. Must be a subset of the model's units."""
        relative_keep(self.base, structure)  # validates
        self.target = copy.deepcopy(structure)
        self._plan = None
        if self.attached:
            self.attach()

    def structure(self) -> Structure:
        """The target structure (original coordinates): what :func:`compact` would keep."""
        return copy.deepcopy(self.target)

    def set_weight_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Per-weight masks (``True`` = keep), replacing earlier ones; keys from
        ``adapter.prunable_linears()``."""
        lin = self.adapter.prunable_linears()
        out = {}
        for k, m in masks.items():
            if k not in lin:
                raise KeyError(f"no prunable Linear {k!r} (known: {', '.join(list(lin)[:6])}, ...)")
            if tuple(m.shape) != tuple(lin[k].weight.shape):
                raise ValueError(f"mask {k} has shape {tuple(m.shape)}, weight has {tuple(lin[k].weight.shape)}")
            out[k] = m.to(device=lin[k].weight.device, dtype=torch.bool)
        self.weight_masks = out
        self._plan = None

    def invalidate(self) -> None:
        """Forget the cached zeroing plan (call after replacing parameters yourself)."""
        self._plan = None

    # ------------------------------------------------------------------ hooks
    @property
    def attached(self) -> bool:
        return bool(self._handles or self._skipped) or active_masks(self.model) is self

    def attach(self) -> None:
        """Install the forward patches for the current target (idempotent)."""
        self.detach()
        other = active_masks(self.model)
        if other is not None and other is not self:
            other.detach()
        set_active_masks(self.model, self)
        rel = relative_keep(self.base, self.target)
        layers = self.adapter.layer_list()
        for j, keep in enumerate(rel.layers):
            if not keep:
                layer = layers[j]
                layer.forward = self.adapter.identity_forward()
                self._skipped.append(layer)
        if not all(rel.hidden):
            kept = torch.tensor([d for d, k in enumerate(rel.hidden) if k], dtype=torch.long)
            for ln in self.adapter.hidden_norms():
                self._handles.append(ln.register_forward_hook(_masked_layer_norm_hook(kept), with_kwargs=True))

    def detach(self) -> None:
        """Remove every forward patch installed by :meth:`attach` (masks and zeros stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for layer in self._skipped:
            if "forward" in layer.__dict__:
                del layer.forward
        self._skipped = []
        clear_active_masks(self.model, self)

    # ----------------------------------------------------------------- zeroing
    def _build_plan(self) -> list[tuple[nn.Parameter, int | None, torch.Tensor, float]]:
        """``(param, axis, index, fill)``: ``param.index_fill_(axis, index, fill)``; with
        ``axis=None`` the index is a boolean keep mask shaped like ``param`` (grouped convs)."""
        rel = relative_keep(self.base, self.target)
        a = self.adapter
        plan: list[tuple[nn.Parameter, int | None, torch.Tensor, float]] = []

        def add(cuts, drop):
            if not drop:
                return
            for cut in cuts:
                units = cut.local(drop)  # the units this cut holds (Cut.offset / size), as its indices
                if not units:
                    continue
                for _, p, axis in cut.params():
                    if cut.conv_groups > 1:
                        plan.append((p, None, _grouped_keep_mask(p, expand_units(units, cut.group), cut.conv_groups), 0.0))
                        continue
                    idx = torch.tensor(expand_units(units, cut.group), dtype=torch.long, device=p.device)
                    plan.append((p, axis, idx, 0.0))

        lsw = a.layer_sum_weights()
        if lsw is not None and not all(rel.layers):
            # removed layers: their weighted-sum entries get softmax weight 0 (see weighted_layer_sum_keep)
            p = getattr(*lsw)
            L = len(rel.layers)
            keep = set(weighted_layer_sum_keep([j for j, k in enumerate(rel.layers) if k], L))
            drop = [i for i in range(L + 1) if i not in keep]
            plan.append((p, 0, torch.tensor(drop, dtype=torch.long, device=p.device), float("-inf")))

        all_parts = a.layers()
        for j, parts in enumerate(all_parts):
            if not rel.layers[j]:
                continue  # the whole layer is skipped by its forward patch
            add(a.head_cuts(j, parts), [h for h, k in enumerate(rel.heads[j]) if not k])
            add(a.ffn_cuts(j, parts), [n for n, k in enumerate(rel.ffn[j]) if not k])
        drop_hidden = [d for d, k in enumerate(rel.hidden) if not k]
        if drop_hidden:
            add(a.hidden_cuts(), drop_hidden)
        return plan

    def _zero_plan(self) -> list[tuple[nn.Parameter, int | None, torch.Tensor, float]]:
        if self._plan is None or any(idx.device != p.device for p, _, idx, _ in self._plan[:1]):
            self._plan = self._build_plan()  # first use, or the model moved to another device
        return self._plan

    def _weight_plan(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        lin = self.adapter.prunable_linears()
        return [(lin[k].weight, m) for k, m in self.weight_masks.items()]

    def _check_model(self, model: nn.Module | None) -> None:
        if self._stale:
            raise RuntimeError(self._stale)
        if model is not None and getattr(model, "module", model) is not self.model and model is not self.model:
            raise ValueError("this MaskState belongs to another model")

    @torch.no_grad()
    def apply(self, model: nn.Module | None = None) -> None:
        """Zero every masked weight and bias; install the forward patches if missing.

        Call right after each ``optimizer.step()`` (and once when the masks change). ``model``
        (optional, may be a DDP wrapper) is only checked to be the state's model."""
        self._check_model(model)
        if active_masks(self.model) is not self:
            self.attach()
        for p, axis, idx, fill in self._zero_plan():
            if axis is None:
                p.mul_(idx.to(dtype=p.dtype))
            else:
                p.index_fill_(axis, idx, fill)
        for p, m in self._weight_plan():
            p.mul_(m.to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def mask_gradients(self, model: nn.Module | None = None) -> None:
        """Zero the gradients of every masked entry. Call after backward, before the step."""
        self._check_model(model)
        for p, axis, idx, _ in self._zero_plan():
            if p.grad is None:
                continue
            if axis is None:
                p.grad.mul_(idx.to(dtype=p.grad.dtype))
            else:
                p.grad.index_fill_(axis, idx, 0)
        for p, m in self._weight_plan():
            if p.grad is not None:
                p.grad.mul_(m.to(device=p.grad.device, dtype=p.grad.dtype))

    # ------------------------------------------------------------------ report
    def sparsity(self) -> dict[str, float]:
        """Masked fraction per kind (relative to the current model), and of the masked Linears."""
        rel = relative_keep(self.base, self.target)

        def frac(flags):
            flat = [f for fs in flags for f in fs] if flags and isinstance(flags[0], list) else flags
            return 1.0 - sum(flat) / len(flat) if flat else 0.0  # no units of the kind (a CNN's heads)

        out = {"layers": frac(rel.layers), "heads": frac(rel.heads), "ffn": frac(rel.ffn), "hidden": frac(rel.hidden)}
        if self.weight_masks:
            kept = sum(int(m.sum()) for m in self.weight_masks.values())
            total = sum(m.numel() for m in self.weight_masks.values())
            out["weights"] = 1.0 - kept / total
        return out

    def state_dict(self) -> dict[str, Any]:
        """``{"base": dict, "target": dict, "weight_masks": {key: bool tensor}}`` (JSON for the
        first two, tensors for the last: save them with safetensors)."""
        return {"base": self.base.to_dict(), "target": self.target.to_dict(),
                "weight_masks": {k: m.clone() for k, m in self.weight_masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        base = Structure.from_dict(state["base"])
        if base != self.base:
            raise ValueError(f"mask state was saved for {base.describe()}, model is {self.base.describe()}")
        self.set_structure(Structure.from_dict(state["target"]))
        self.set_weight_masks(state.get("weight_masks", {}))

    def _mark_stale(self) -> None:
        """The model was compacted through another state / a Structure: this one no longer fits."""
        self.detach()
        self._stale = ("this MaskState was made for the model before compaction; build a new one "
                       "(or pass the state itself to compact(), which rebases it)")

    def _rebase(self, structure: Structure, weight_masks: dict[str, torch.Tensor]) -> None:
        """After compaction: the new model is the base, nothing structural is masked."""
        self.detach()
        self._stale = None
        self.base = copy.deepcopy(structure)
        self.target = copy.deepcopy(structure)
        self.weight_masks = weight_masks
        self._plan = None


def _masked_layer_norm_hook(kept: torch.Tensor):
    """LayerNorm / RMSNorm over the kept dims only; masked dims output 0 (as their weight/bias
    are 0). An RMSNorm is computed in float32 as transformers' ``*RMSNorm`` classes do, so the
    compacted model's own norm gives the same numbers."""

    def hook(module: nn.Module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        idx = kept.to(x.device)
        w = module.weight.index_select(0, idx) if module.weight is not None else None
        xs = x.index_select(-1, idx)
        if is_rms_norm(module):
            y = F.rms_norm(xs.float(), (idx.numel(),), None, rms_norm_eps(module)).to(x.dtype) * w
        else:
            b = module.bias.index_select(0, idx) if module.bias is not None else None
            y = F.layer_norm(xs, (idx.numel(),), w, b, module.eps)
        return torch.zeros_like(output).index_copy(-1, idx, y.to(output.dtype))

    return hook


# ------------------------------------------------------- unstructured / N:M
def unstructured_masks(scores: dict[str, torch.Tensor], sparsity: float, *, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Keep the highest-scoring ``1 - sparsity`` of the entries (``True`` = keep).

    ``scores``: ``{"<layer>.<role>": tensor}`` shaped like the weights, e.g.
    ``weight_scores(adapter, "magnitude")`` or ``acc.scores()["weights"]`` (movement). ``scope``
    ``"layer"`` ranks within each matrix, ``"global"`` across all of them."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope == "layer":
        out = {}
        for k, s in scores.items():
            n_keep = max(1, s.numel() - int(sparsity * s.numel()))
            thr_idx = torch.topk(s.flatten().float(), n_keep).indices
            m = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
            m[thr_idx] = True
            out[k] = m.view_as(s)
        return out
    if scope == "global":
        flat = torch.cat([s.flatten().float().cpu() for s in scores.values()])
        n_keep = max(1, flat.numel() - int(sparsity * flat.numel()))
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[torch.topk(flat, n_keep).indices] = True
        out, i = {}, 0
        for k, s in scores.items():
            out[k] = keep[i:i + s.numel()].view_as(s).to(s.device)
            i += s.numel()
        return out
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")


def nm_masks(scores: dict[str, torch.Tensor], n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """N:M semi-structured masks: in every group of ``m`` consecutive INPUT entries of each
    weight row keep the ``n`` highest-scoring (2:4 = the sparse-tensor-core pattern)."""
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got {n}:{m}")
    out = {}
    for k, s in scores.items():
        rows, cols = s.shape
        if cols % m:
            raise ValueError(f"{k}: {cols} input features are not a multiple of m={m}")
        g = s.float().reshape(rows, cols // m, m)
        top = torch.topk(g, n, dim=-1).indices
        mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, top, True)
        out[k] = mask.reshape(rows, cols)
    return out


def weight_scores(adapter: ArchAdapter, criterion: str = "magnitude") -> dict[str, torch.Tensor]:
    """|w| of every prunable Linear (the magnitude criterion for unstructured / N:M masks)."""
    if criterion != "magnitude":
        raise ValueError("weight_scores computes magnitude only; use ImportanceAccumulator(kinds=('weights',)) "
                         "for taylor / movement")
    return {k: lin.weight.detach().abs() for k, lin in adapter.prunable_linears().items()}
