"""Importance criteria for structure groups, accumulated over optimizer steps.

A GROUP is every weight entry that disappears with a unit (the adapter's cuts):

- head ``h`` of layer ``l``: q/k/v rows ``h*d:(h+1)*d`` and their biases, o columns;
- FFN neuron ``n``: fc1 row ``n`` and its bias, fc2 column ``n``;
- hidden dim ``i``: that entry in every embedding, LayerNorm, Linear, convolution and raw
  parameter of the residual width (see ``ArchAdapter.hidden_cuts``; a grouped convolution's
  in channel ``i`` only in the rows of its group, ``Cut.conv_groups``);
- layer ``l``: the sum of its heads' and its FFN neurons' scores (all criteria);
- ``weights`` (unstructured): each entry of the blocks' q/k/v/o/fc1/fc2 weights.

Criteria (higher = more important):

- ``magnitude``: L1 (``p=1``, default) or L2 (``p=2``) norm of the group's current weights.
  Needs no gradients; ``update`` only counts calls, ``scores`` reads the weights.
- ``taylor``: first-order Taylor estimate of the loss change when the group is removed,
  ``|sum_{w in group} w * dL/dw|`` computed at each ``update`` and SUMMED over updates
  (Molchanov et al. 2019, group form). Unstructured: ``sum_t |w * g|`` per entry.
- ``movement``: ``sum_t sum_{w in group} -w * dL/dw`` (Sanh et al. 2020): positive when the
  weights move away from zero. Unstructured: per entry.

Scores are plain float32 tensors in the CURRENT model's coordinates (heads ``[L, H]``, ffn
``[L, I]``, layers ``[L]``, hidden ``[D]``), so under DDP a caller may ``all_reduce`` them
before ranking (gradients are already averaged across ranks, so each rank holds the same
scores anyway). A layer whose forward is patched out by a mask has no gradients and
accumulates nothing. Call ``update`` after backward with ``.grad`` populated (once per
optimizer step, before the step; with AMP, after unscaling).
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import ArchAdapter, Cut, get_adapter
from ..carried import structure_record

CRITERIA = ("magnitude", "taylor", "movement")
KINDS = ("heads", "ffn", "layers", "hidden", "weights")


def _reduce(t: torch.Tensor, axis: int, group: int) -> torch.Tensor:
    """Sum ``t`` over every axis except ``axis``, then over ``group`` consecutive entries."""
    s = t.movedim(axis, 0).reshape(t.shape[axis], -1).sum(1)
    return s.reshape(-1, group).sum(1) if group > 1 else s


def _reduce_grouped_in(t: torch.Tensor, conv_groups: int) -> torch.Tensor:
    """Per in channel of a grouped conv weight ``[C_out, C_in/G, *k]``: the sum over the rows of
    its group and the kernel (``Cut.conv_groups``)."""
    G, c_out, n = conv_groups, t.shape[0], t.shape[1]
    return t.reshape(G, c_out // G, n, -1).sum((1, 3)).reshape(-1)


def _group_sum(cuts: list[Cut], fn, width: int | None = None) -> torch.Tensor | None:
    """``sum over the group of fn(weight, grad)`` per unit, over all cuts (None if no grads).

    A cut that holds only some units (``Cut.size``) adds into entries ``offset ..`` of a vector of
    ``width`` units (needed then)."""
    total = None
    for cut in cuts:
        for _, p, axis in cut.params():
            v = fn(p)
            if v is None:
                continue
            if cut.conv_groups > 1:
                r = _reduce_grouped_in(v.float(), cut.conv_groups)
                r = r.reshape(-1, cut.group).sum(1) if cut.group > 1 else r
            else:
                r = _reduce(v.float(), axis, cut.group)
            if cut.size is not None:
                full = torch.zeros(width, dtype=r.dtype, device=r.device)
                full[cut.offset:cut.offset + r.numel()] = r
                r = full
            total = r if total is None else total + r.to(total.device)
    return total


class ImportanceAccumulator:
    """Accumulate group importance over optimizer steps (see module docs).

    >>> acc = ImportanceAccumulator(model, kinds=("heads", "ffn"), criterion="taylor")
    >>> loss.backward(); acc.update(); optimizer.step()
    >>> scores = acc.scores()        # {"heads": [L, H], "ffn": [L, I]}
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter | None = None,
        kinds: tuple[str, ...] = ("heads", "ffn", "layers", "hidden"),
        criterion: str = "taylor",
        p: int = 1,
    ):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown importance kinds {sorted(unknown)}; known: {KINDS}")
        if p not in (1, 2):
            raise ValueError("p must be 1 (L1) or 2 (L2)")
        self.adapter = adapter or get_adapter(model)
        if "hidden" in kinds and "ffn" not in kinds and self.adapter.ffn_follows_hidden:
            kinds = tuple(kinds) + ("ffn",)  # the config derives the FFN width from the hidden one
        self.kinds = tuple(kinds)
        self.criterion = criterion
        self.p = p
        self.reset()

    def reset(self) -> None:
        """Drop everything accumulated. Done automatically when the model was compacted since
        the last update (unit indices change), so scores never mix two shapes."""
        self.num_updates = 0
        self._acc: dict[str, object] = {}
        self._record = structure_record(self.adapter.model)

    # ------------------------------------------------------------- internals
    def _need(self) -> set[str]:
        """Kinds reduced from tensors ("layers" is derived from "heads" and "ffn")."""
        need = set(self.kinds) - {"layers"}
        if "layers" in self.kinds:
            need |= {"heads", "ffn"}
        return need

    def _group_scores(self, fn, post) -> dict[str, object]:
        """Per-kind group reductions of ``fn(param)``; ``post`` maps each reduced tensor."""
        a = self.adapter
        need = self._need()
        out: dict[str, object] = {}
        parts = a.layers()
        heads = [a.num_heads(i) for i in range(len(parts))]
        inter = [a.intermediate_size(i) for i in range(len(parts))]
        hmax, imax = max(heads, default=0), max(inter, default=0)

        def per_layer(cut_fn, width, counts):
            rows = []
            for i, pt in enumerate(parts):
                cuts = cut_fn(i, pt)
                n = counts[i]  # this layer's heads / FFN neurons
                r = _group_sum(cuts, fn, n) if cuts else None
                row = torch.zeros(width)
                if r is not None:
                    row[:n] = post(r).cpu()
                row[n:] = float("-inf")  # a unit this (non-uniform) layer does not have
                rows.append(row)
            return torch.stack(rows) if rows else torch.zeros(0, width)

        if "heads" in need:
            out["heads"] = per_layer(a.head_cuts, hmax, heads)
        if "ffn" in need:
            out["ffn"] = per_layer(a.ffn_cuts, imax, inter)
        if "hidden" in need:
            r = _group_sum(a.hidden_cuts(), fn, a.hidden_size())
            out["hidden"] = post(r).cpu() if r is not None else torch.zeros(a.hidden_size())
        if "weights" in need:
            w = {}
            for k, lin in a.prunable_linears().items():
                v = fn(lin.weight)
                w[k] = post(v.float()) if v is not None else torch.zeros_like(lin.weight, dtype=torch.float32)
            out["weights"] = w
        return out

    def _zero_scores(self) -> dict[str, object]:
        """Zeros in the shapes :meth:`scores` has for the current model."""
        return self._group_scores(lambda p: torch.zeros_like(p), lambda r: r)

    # ------------------------------------------------------------------- API
    def state_dict(self) -> dict[str, torch.Tensor]:
        """What was accumulated, as flat tensors (a checkpoint saves them with safetensors, so a
        stage resumed in its middle ranks units on the whole stage's gradients, not only on the
        steps after the checkpoint). ``weights`` entries are ``weights.<key>``."""
        out = {"num_updates": torch.tensor(self.num_updates, dtype=torch.int64)}
        for kind, value in self._acc.items():
            if kind == "weights":
                out.update({f"weights.{name}": t.detach().cpu().contiguous() for name, t in value.items()})
            else:
                out[kind] = value.detach().cpu().contiguous()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state_dict` of an accumulator over a model of the same shapes."""
        self.reset()
        state = dict(state)
        self.num_updates = int(state.pop("num_updates", torch.tensor(0)))
        shapes = self._zero_scores()
        weights = {}
        for key, value in state.items():
            kind, _, name = key.partition(".")
            expected = shapes.get(kind)
            if kind == "weights":
                expected = expected.get(name) if expected is not None else None
            if expected is None or tuple(expected.shape) != tuple(value.shape):
                got = tuple(value.shape)
                want = None if expected is None else tuple(expected.shape)
                raise ValueError(f"saved importance '{key}' {got} does not fit this model ({want}): "
                                 "resume with the model the checkpoint was made from")
            value = value.to(device=expected.device, dtype=torch.float32, copy=True)  # saved tensors are read on the CPU
            if kind == "weights":
                weights[name] = value
            else:
                self._acc[kind] = value
        if weights:
            self._acc["weights"] = weights

    @torch.no_grad()
    def update(self) -> None:
        """Accumulate one step's contribution from the current weights and ``.grad``."""
        if structure_record(self.adapter.model) is not self._record:
            self.reset()  # compacted since the last update
        self.num_updates += 1
        if self.criterion == "magnitude":
            return
        sign = -1.0 if self.criterion == "movement" else 1.0

        def wg(p):
            return None if p.grad is None else p.detach() * p.grad.detach() * sign

        if self.criterion == "taylor":
            group_post = torch.abs  # |sum w*g| per group per step
        else:
            group_post = lambda r: r  # noqa: E731
        step = self._group_scores(wg, group_post)  # weights: elementwise, so taylor gives |w*g|
        for k, v in step.items():
            if k == "weights":
                acc = self._acc.setdefault("weights", {})
                for name, t in v.items():
                    same = name in acc and acc[name].shape == t.shape
                    acc[name] = acc[name] + t if same else t.clone()
            elif k in self._acc and self._acc[k].shape == v.shape:
                self._acc[k] = self._acc[k] + v
            else:
                self._acc[k] = v.clone()

    @torch.no_grad()
    def scores(self) -> dict[str, object]:
        """``{kind: float tensor}`` for the requested kinds (``weights``: ``{key: tensor}``).

        Units a (non-uniform) layer does not have are ``-inf``. Before any update, gradient
        criteria give zeros."""
        if self.criterion == "magnitude":
            if self.p == 1:
                res = self._group_scores(lambda p: p.detach().abs(), lambda r: r)
            else:
                res = self._group_scores(lambda p: p.detach() ** 2, torch.sqrt)
        else:
            if structure_record(self.adapter.model) is not self._record:
                self.reset()
            res = {}
            for k in self._need():
                if k in self._acc:
                    v = self._acc[k]
                    res[k] = {n: t.clone() for n, t in v.items()} if k == "weights" else v.clone()
            if len(res) < len(self._need()):
                zeros = self._zero_scores()
                for k in self._need():
                    res.setdefault(k, zeros[k])
        if "layers" in self.kinds:
            h = res["heads"].masked_fill(torch.isinf(res["heads"]), 0.0)
            f = res["ffn"].masked_fill(torch.isinf(res["ffn"]), 0.0)
            res["layers"] = h.sum(1) + f.sum(1)
        return {k: res[k] for k in self.kinds}
