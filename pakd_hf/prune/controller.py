"""Runs one recipe stage's `pruning` block against a model, step by step.

The pruning session (:class:`pakd_hf.prune.session.PruningSession`, which the trainer owns and
calls from its callbacks) calls three methods, and knows nothing else about a stage's pruning:

- :meth:`StagePruner.before_optimizer_step` (gradients of the whole accumulation window are
  there): accumulate importance, zero the gradients of masked weights;
- :meth:`StagePruner.after_optimizer_step`: re-zero masked weights (so no optimizer momentum
  or weight decay revives them) and, on an update step of the schedule, grow the masks;
- :meth:`StagePruner.finish` at the end of the stage: reach the final target and, when the
  recipe says so, physically compact the model (the caller must then rebuild its optimizer).

Under DDP every rank must take the same decision: importance scores go through ``reduce``
(a sum across processes) before any ranking.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..arch import (
    HeadDimError,
    NonUniformStructureError,
    UnsupportedArchitectureError,
    get_adapter,
    registered_adapters,
)
from ..arch.structure import Structure
from ..errors import RecipeError
from .budget import counts_for_budget
from .compact import CompactResult, compact
from .importance import ImportanceAccumulator
from .masks import MaskState, nm_masks, unstructured_masks, weight_scores
from .rotate import check_rotatable
from .schedule import is_update_step, sparsity_at
from .select import select_structure

Reduce = Callable[[torch.Tensor], torch.Tensor]


def original_size(structure: Structure, kind: str) -> int:
    return {
        "heads": structure.num_heads,
        "ffn": structure.intermediate_size,
        "layers": structure.num_layers,
        "hidden": structure.hidden_size,
    }[kind]


def current_count(structure: Structure, kind: str) -> int:
    """Units of `kind` the structure keeps (per layer for heads/FFN: the largest layer)."""
    if kind == "layers":
        return len(structure.layers)
    if kind == "hidden":
        return len(structure.hidden)
    per_layer = structure.heads_per_layer() if kind == "heads" else structure.ffn_per_layer()
    return max(per_layer)


def target_count(keep, structure: Structure, kind: str) -> int:
    """A recipe `Keep` as an absolute count (fractions are of the ORIGINAL size)."""
    total = original_size(structure, kind)
    if keep.keep is not None:
        return keep.keep
    return max(1, round(keep.keep_fraction * total))


def check_targets(spec, structure: Structure, path: str) -> None:
    """Raise a RecipeError when a target cannot be met from `structure` (before training)."""
    for kind, keep in spec.structured_targets().items():
        total = original_size(structure, kind)
        n = target_count(keep, structure, kind)
        if n > total:
            raise RecipeError(
                f"{path}.{kind}.keep", f"keeps {n} but the model has only {total} {kind}{' per layer' if kind in ('heads', 'ffn') else ''}"
            )
        have = current_count(structure, kind)
        if n > have:
            raise RecipeError(
                f"{path}.{kind}", f"keeps {n} but an earlier stage already pruned {kind} to {have}; pruning never grows"
            )


def budget_counts(model, adapter, current: Structure, spec, sample_inputs: dict | None) -> dict[str, int]:
    """The counts a stage's `budget` resolves to (explicit targets of other kinds held fixed)."""
    b = spec.budget
    fixed = {kind: target_count(keep, current, kind) for kind, keep in spec.structured_targets().items()}
    return counts_for_budget(
        model, adapter, current, kinds=list(b.kinds), keep=b.keep, metric=b.metric, fixed=fixed, inputs=sample_inputs
    )


def dry_run(model: nn.Module, stages, path: str = "stages") -> None:
    """Check every stage's pruning targets against `model` before training (nothing changes).

    Magnitude scores stand in for the real ones: the shapes, and so the errors (a target
    larger than the model, BERT's hidden != heads * head_dim), do not depend on them.
    """
    adapter = get_adapter(model)
    base = Structure.from_model(model, adapter)
    current = base
    for i, stage in enumerate(stages):
        spec = stage.pruning
        if spec is None:
            continue
        where = f"{path}[{i}].pruning"
        kinds = list(spec.structured_targets()) + [k for k in ("budget", "unstructured", "n_m") if getattr(spec, k, None)]
        try:
            adapter.check_kinds(kinds)  # e.g. a CNN has no heads: one line naming what it can prune
        except UnsupportedArchitectureError as exc:
            raise RecipeError(where, str(exc)) from None
        check_targets(spec, current, where)
        if spec.hidden is not None and getattr(spec.hidden, "method", "select") == "rotate":
            try:
                check_rotatable(adapter)
            except UnsupportedArchitectureError as exc:
                raise RecipeError(f"{where}.hidden.method", str(exc)) from None
        counts = {kind: target_count(keep, current, kind) for kind, keep in spec.structured_targets().items()}
        if spec.budget is not None:
            if spec.budget.metric == "macs":
                continue  # MACs need real inputs: resolved when the stage starts
            try:
                counts.update(budget_counts(model, adapter, current, spec, None))
            except ValueError as exc:
                raise RecipeError(f"{where}.budget", str(exc)) from None
        if not counts:
            continue
        acc = ImportanceAccumulator(model, adapter, kinds=tuple(counts), criterion="magnitude")
        acc.update()
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        if not spec.uniform and not (adapter.custom_code and model_type.removeprefix("pakd_") in adapter.model_types):
            have = [t for a in registered_adapters() if a.custom_code for t in a.model_types]
            raise RecipeError(
                f"{where}.uniform",
                f"false needs generated modeling code, which exists for {', '.join(have)} but not '{model_type}'; set true",
            )
        try:
            current = select_structure(
                acc.scores(), base, within=current, adapter=adapter, uniform=spec.uniform,
                check_export=spec.compact and spec.uniform, **counts
            )
        except (HeadDimError, NonUniformStructureError) as exc:
            raise RecipeError(
                where, f"{exc} (or set uniform: false to save it with generated modeling code)"
            ) from None


class StagePruner:
    """The pruning of one stage, from global step `start` to `end` (see the module docs)."""

    def __init__(
        self,
        model: nn.Module,
        spec,
        *,
        stage_start: int,
        stage_end: int,
        mask_state: MaskState | None = None,
        reduce: Reduce | None = None,
        initial: Structure | None = None,
        sample_inputs: dict | None = None,
    ):
        self.spec = spec
        self.adapter = get_adapter(model)
        self.model = self.adapter.model
        self.reduce = reduce or (lambda t: t)
        self.start = stage_start + spec.start_step
        self.end = stage_start + spec.end_step if spec.end_step is not None else stage_end
        self.mask_state = mask_state if mask_state is not None else MaskState(self.model, self.adapter)
        self.mask_state.attach()
        self.original = Structure.full(*Structure.from_model(self.model, self.adapter).original_sizes())
        # Where this stage starts (original coordinates); given when resuming mid-stage.
        self.initial = initial if initial is not None else self.mask_state.structure()
        self.targets = {kind: target_count(keep, self.original, kind) for kind, keep in spec.structured_targets().items()}
        if spec.budget is not None:
            self.targets.update(budget_counts(self.model, self.adapter, self.initial, spec, sample_inputs))
        kinds = tuple(self.targets)
        weights = spec.unstructured is not None and spec.unstructured.method == "movement"
        if weights:
            kinds = kinds + ("weights",)
        self.accumulator = (
            ImportanceAccumulator(self.model, self.adapter, kinds=kinds, criterion=spec.importance) if kinds else None
        )
        self.finished = False
        self._one_shot_done = False

    # ---- hooks ---------------------------------------------------------------------------
    def before_optimizer_step(self, step: int) -> None:
        if self.accumulator is not None and self.start <= step < self.end + 1:
            self.accumulator.update()
        self.mask_state.mask_gradients()

    def after_optimizer_step(self, step: int) -> None:
        """`step` is the number of optimizer steps done (Trainer's global_step after the step)."""
        self.mask_state.apply()
        if self.finished:
            return
        if self.spec.schedule == "one-shot":
            if step >= self.start and not self._one_shot_done:
                self._update(step)
                self._one_shot_done = True
        elif is_update_step(step, self.start, self.end, self.spec.frequency):
            self._update(step)

    def finish(self, step: int) -> CompactResult | None:
        """Reach the final targets; compact when the recipe says so. Idempotent."""
        if not self.finished:
            self._update(max(step, self.end))
            self.finished = True
        if self.spec.compact and self.has_structural_masks():
            # Non-uniform shapes are not a stock config: they are saved with generated code.
            return compact(self.model, self.mask_state, adapter=self.adapter, check_export=self.spec.uniform)
        return None

    def has_structural_masks(self) -> bool:
        return self.mask_state.structure() != self.mask_state.base

    # ---- internals ---------------------------------------------------------------------
    def _progress(self, step: int) -> float:
        if self.spec.schedule == "one-shot":
            return 1.0 if step >= self.start else 0.0
        if self.end <= self.start:
            return 1.0
        return sparsity_at(step, start=self.start, end=self.end, initial=0.0, final=1.0, kind=self.spec.schedule)

    def _scores(self) -> dict[str, torch.Tensor]:
        if self.accumulator is None:
            return {}
        if self.spec.importance == "magnitude" or self.accumulator.num_updates == 0:
            scores = ImportanceAccumulator(
                self.model, self.adapter, kinds=self.accumulator.kinds, criterion="magnitude"
            )
            scores.update()
            raw = scores.scores()
        else:
            raw = self.accumulator.scores()
        # Every rank must rank the same numbers: sum the scores across processes.
        return {k: self.reduce(v.clone()) if torch.is_tensor(v) else v for k, v in raw.items()}

    def _update(self, step: int) -> None:
        progress = self._progress(step)
        scores = self._scores()
        if self.targets:
            counts = {}
            for kind, target in self.targets.items():
                start = current_count(self.initial, kind)
                # Counts only go down: ceil keeps the schedule from overshooting early.
                counts[kind] = max(target, math.ceil(start - (start - target) * progress - 1e-9))
            final = progress >= 1.0
            structure = select_structure(
                scores,
                self.mask_state.base,
                within=self.mask_state.structure(),
                adapter=self.adapter,
                uniform=self.spec.uniform,
                check_export=final and self.spec.compact and self.spec.uniform,
                **counts,
            )
            self.mask_state.set_structure(structure)
        if self.spec.unstructured is not None:
            u = self.spec.unstructured
            w = scores.get("weights") if u.method == "movement" else None
            if w is None:
                w = weight_scores(self.adapter, "magnitude")
            w = {k: self.reduce(v.clone()) for k, v in w.items()}
            self.mask_state.set_weight_masks(unstructured_masks(w, u.sparsity * progress, scope=u.scope))
        if self.spec.n_m is not None and progress > 0:
            w = {k: self.reduce(v.clone()) for k, v in weight_scores(self.adapter, "magnitude").items()}
            self.mask_state.set_weight_masks(nm_masks(w, self.spec.n_m.n, self.spec.n_m.m))
        self.mask_state.apply()
