"""A PaKD run's pruning, from the first stage to the saved student: the one object through
which a trainer drives the engine.

:class:`PruningSession` owns what pruning keeps between steps, stages and checkpoints: the
masks (:class:`~.masks.MaskState`, alive across stages until a stage compacts), the current
stage's :class:`~.controller.StagePruner` (importance, schedule, selection, compaction), the
hidden-stream rotation (:mod:`.rotate`), vocabulary pruning (:mod:`.vocab`) and the records
each leaves in ``pakd.json``, and the part of a checkpoint that is pruning's (masks, the
stage's starting structure and importance sums, the compacted shapes). The trainer keeps
Trainer's side (stages, optimizer, loss, logging) and hands the session what only it can do,
as callables: reduce a tensor over processes, broadcast modules from process 0, give training
batches (inputs only), and react to a compaction (new parameters: projections, DDP wrapper,
progress bar).

Stages are the recipe's ``pruning`` blocks, read by attribute; this module imports neither the
trainer nor the recipe front end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..arch import get_adapter
from ..arch.structure import Structure
from ..carried import embedding_rows, structure_record, vocabulary_record
from .budget import model_cost
from .compact import CompactResult, compact
from .controller import StagePruner, target_count
from .masks import MaskState
from .rotate import rotate_hidden
from .vocab import prune_vocabulary_by_counts

__all__ = ["PruningSession", "MASKS_FILENAME", "IMPORTANCE_FILENAME"]

MASKS_FILENAME = "pakd_masks.safetensors"
IMPORTANCE_FILENAME = "pakd_importance.safetensors"


class PruningSession:
    """Pruning over one training run of ``model`` (see the module docs).

    Args:
        model: the student (unwrapped; compaction changes it in place), or a function that
            returns it: Trainer replaces its model in ``train()`` (``model_init``,
            hyperparameter search), and the session must follow it.
        teacher: the teacher, if any: a student whose vocabulary was pruned before training
            maps its token ids to the teacher's (:attr:`teacher_token_ids`).
        projections: the hidden-distillation projections, rotated with the stream.
        reduce: sums a tensor over processes (identity in one process).
        broadcast: copies the given modules' tensors from process 0 to every process.
        batches: training batches, inputs only (no labels), on the model's device.
        on_compacted: called with a :class:`~.compact.CompactResult` (and an optional message)
            after every change of the model's parameters.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        *,
        teacher: nn.Module | None = None,
        projections: nn.Module | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        broadcast: Callable[[list[nn.Module]], None] | None = None,
        batches: Callable[[], Iterable[dict]] | None = None,
        on_compacted: Callable[[CompactResult, str | None], None] | None = None,
    ):
        self._model = model
        self.projections = projections
        self.reduce = reduce or (lambda t: t)
        self.broadcast = broadcast or (lambda modules: None)
        self.batches = batches
        self.on_compacted = on_compacted or (lambda result, message=None: None)
        self.mask_state: MaskState | None = None
        self.pruner: StagePruner | None = None
        self.rotation_record: dict | None = None
        self.vocab_record: dict | None = None
        # Data tokenized with the original tokenizer, after vocabulary pruning at the end:
        # its ids -> the pruned student's (evaluate() / predict() keep working on it).
        self.vocab_id_map: torch.Tensor | None = None
        # A student whose vocabulary was pruned before training: its ids -> the teacher's, when
        # the teacher kept the original vocabulary.
        self.teacher_token_ids: torch.Tensor | None = None
        self._resume: dict | None = None
        # Compression progress in the logs (:meth:`progress`): the shapes the student starts
        # from, and the last figures, recomputed only when the structure changes.
        self._start_structure: Structure | None = None
        self._cost_inputs: dict | None = None
        self._start_cost: tuple[float, float, dict] | None = None
        self._progress: tuple[str, dict[str, float]] | None = None
        pruned = vocabulary_record(self.model)
        if pruned is not None:
            self.vocab_record = pruned.record()
            if teacher is not None and embedding_rows(teacher) != embedding_rows(self.model):
                self.teacher_token_ids = pruned.teacher_ids()

    @property
    def model(self) -> nn.Module:
        """The student the session prunes now."""
        return self._model if isinstance(self._model, nn.Module) else self._model()

    # ---- what the student carries ------------------------------------------------------
    def structure(self, adapter=None) -> Structure:
        """The structure the student has now: the masks' (mid-stage) or the model's."""
        return self.mask_state.structure() if self.mask_state is not None else Structure.from_model(self.model, adapter)

    def has_structural_masks(self) -> bool:
        return self.mask_state is not None and self.mask_state.structure() != self.mask_state.base

    def involved(self, stages: Iterable | None) -> bool:
        """Whether this run prunes or continues a pruned student (then pakd.json is written)."""
        return (
            self.vocab_record is not None
            or self.mask_state is not None
            or structure_record(self.model) is not None
            or any(s.pruning is not None for s in (stages or ()))
        )

    def records(self) -> dict[str, Any]:
        """What pakd.json records beside the structure: sparsity, vocabulary, rotation."""
        extra: dict[str, Any] = {}
        if self.mask_state is not None and self.mask_state.weight_masks:
            extra["sparsity"] = self.mask_state.sparsity()
        if self.vocab_record is not None:
            extra["vocabulary"] = self.vocab_record
        if self.rotation_record is not None:
            extra["hidden_rotation"] = self.rotation_record
        return extra

    # ---- compression progress, for the logs ----------------------------------------------
    def mark_start(self, sample_inputs: Callable[[], dict]) -> None:
        """Remember the student as it is now (before a resumed checkpoint compacts it) as what
        :meth:`progress` compares with, and one training example (``sample_inputs()``) to count
        MACs on; taken before the training loop: a loader made inside the loop joins
        accelerate's state and changed a resumed run's result."""
        try:
            self._start_structure = Structure.from_model(self.model)
        except ValueError:
            self._start_structure = None
        if self._start_structure is not None:
            with torch.random.fork_rng(devices=[]):
                try:
                    self._cost_inputs = sample_inputs()
                except Exception:  # noqa: BLE001 - no training data to sample: counts only
                    self._start_structure = None

    def progress(self) -> dict[str, float]:
        """What the student keeps now, beside the losses in every log (so tensorboard, wandb or
        trackio plot the compression curve): layers, heads, FFN neurons and hidden dims kept (of
        the masks' target mid-stage, of the compact model after), the vocabulary, and the
        parameters and MACs per example of that structure as fractions of the starting model's
        when a stock config holds it (not per-layer shapes mid-stage: counts only then; counted on
        a model built on the meta device, milliseconds, recomputed only when the structure
        changes; MACs on one training example)."""
        model = self.model
        try:
            adapter = get_adapter(model)
        except ValueError:  # a family the pruning engine does not know: nothing to report
            return {}
        structure = self.structure(adapter)
        vocab = getattr(model.config, "vocab_size", None)
        key = json.dumps([structure.to_dict(), vocab], sort_keys=True)
        if self._progress is not None and self._progress[0] == key:
            return dict(self._progress[1])
        kept = structure.layers
        out: dict[str, float] = {
            "pakd/layers": len(kept),
            "pakd/heads": sum(len(structure.heads[i]) for i in kept),
            "pakd/ffn": sum(len(structure.ffn[i]) for i in kept),
            "pakd/hidden": len(structure.hidden),
        }
        if vocab:
            out["pakd/vocab"] = vocab
        # fork_rng: a new loader iterator draws a seed, and a family whose MACs cannot be counted on
        # the meta device builds a real model: neither may move training's random state.
        with torch.random.fork_rng(devices=[]):
            try:
                if self._start_cost is None and self._start_structure is not None:
                    inputs = self._cost_inputs
                    start = self._start_structure
                    self._start_cost = (model_cost(model, adapter, start, "params", None),
                                        model_cost(model, adapter, start, "macs", inputs), inputs)
            except Exception:  # noqa: BLE001 - not countable for this family: counts only, and no retry
                self._start_structure = None
            try:
                if self._start_cost is not None:
                    params0, macs0, inputs = self._start_cost
                    out["pakd/params_kept"] = round(model_cost(model, adapter, structure, "params", None) / params0, 5)
                    out["pakd/macs_kept"] = round(model_cost(model, adapter, structure, "macs", inputs) / macs0, 5)
            except Exception:  # noqa: BLE001 - a structure no stock config holds (per-layer shapes): counts only
                pass
        self._progress = (key, out)
        return dict(out)

    # ---- stages -------------------------------------------------------------------------
    def begin_stage(self, stage, index: int, start: int, end: int, sample_inputs: Callable[[], dict] | None = None) -> bool:
        """Start stage ``index`` (global steps [start, end)): its pruning block, if any (masks
        persist across stages until compacted). Returns True when the model's parameters were
        replaced (a hidden rotation): the caller rebuilds its optimizer."""
        resume, self._resume = self._resume, None
        if resume is not None and self.mask_state is None and resume.get("mask_state"):
            self.mask_state = MaskState(self.model)
            masks = {}
            if resume.get("masks_file"):
                masks = load_file(resume["masks_file"])
            self.mask_state.load_state_dict({**resume["mask_state"], "weight_masks": masks})
            self.mask_state.attach()
            self.mask_state.apply()
        if stage is None or stage.pruning is None:
            self.pruner = None
            return False
        spec = stage.pruning
        rotated = False
        if spec.hidden is not None and spec.hidden.method == "rotate":
            rotated = self._rotate_hidden(spec.hidden, stage.name)
            spec = dataclasses.replace(spec, hidden=None)  # done: the schedule prunes the other kinds
        initial = None
        if resume is not None and resume.get("stage_initial") and resume.get("stage_index") == index:
            initial = Structure.from_dict(resume["stage_initial"])
        budget = stage.pruning.budget
        self.pruner = StagePruner(
            self.model,
            spec,
            stage_start=start,
            stage_end=end,
            mask_state=self.mask_state,
            reduce=self.reduce,
            initial=initial,
            sample_inputs=sample_inputs() if sample_inputs is not None and budget is not None and budget.metric == "macs" else None,
        )
        self.mask_state = self.pruner.mask_state
        if initial is not None and resume.get("importance_file") and self.pruner.accumulator is not None:
            # Taylor / movement sums of the steps before the checkpoint: without them a resumed
            # stage would rank units on its remaining steps only.
            self.pruner.accumulator.load_state_dict(load_file(resume["importance_file"]))
        return rotated

    def before_optimizer_step(self, step: int) -> None:
        if self.pruner is not None:
            self.pruner.before_optimizer_step(step)
        elif self.mask_state is not None:
            self.mask_state.mask_gradients()

    def after_optimizer_step(self, step: int) -> None:
        if self.pruner is not None:
            self.pruner.after_optimizer_step(step)
        elif self.mask_state is not None:
            self.mask_state.apply()

    def finish_stage(self, step: int, end_of_training: bool = False) -> bool:
        """End the current stage's pruning: final masks, then compaction if the recipe says so.

        At the end of training structural masks are compacted in any case, so they never reach
        a saved model as zeros (unstructured and N:M masks stay: they are saved dense). Returns
        True when the model was compacted."""
        result = None
        if self.pruner is not None:
            result = self.pruner.finish(step)
            self.pruner = None
        if result is None and end_of_training and self.has_structural_masks():
            result = compact(self.model, self.mask_state, check_export=False)
        if result is None:
            return False
        self.on_compacted(result, None)
        return True

    def _rotate_hidden(self, spec, stage_name: str) -> bool:
        """`hidden.method: rotate`: rotate the student's stream onto its principal directions
        (measured on `spec.calibration` training examples) and cut it to the target. A student
        already at the target (a resumed stage) is left alone. Returns True when it rotated."""
        current = Structure.from_model(self.model)
        target = target_count(spec, Structure.full(*current.original_sizes()), "hidden")
        if len(current.hidden) <= target:
            return False
        if self.mask_state is not None:
            if self.mask_state.structure() != self.mask_state.base:
                raise ValueError(
                    f"stage '{stage_name}' rotates the hidden stream, but an earlier stage left "
                    "structural masks uncompacted: set compact: true on it"
                )
            if self.mask_state.weight_masks:
                raise ValueError(
                    f"stage '{stage_name}' rotates the hidden stream, which would fill in the "
                    "unstructured / N:M sparsity of an earlier stage: sparsify after the rotation"
                )
            # The rotation compacts the model: the earlier stages' mask state no longer fits it.
            self.mask_state.detach()
            self.mask_state = None
        batches, seen = [], 0
        for batch in self.batches():
            batches.append(batch)
            seen += next((int(v.shape[0]) for v in batch.values() if torch.is_tensor(v) and v.dim() > 0), 0)
            if seen >= spec.calibration:
                break
        result = rotate_hidden(self.model, batches, target, projections=self.projections)
        # Each process measured its own batches: all take process 0's rotated model.
        self.broadcast([self.model] + ([self.projections] if self.projections is not None else []))
        self.rotation_record = result.record()
        message = (
            f"[pakd] hidden stream rotated and cut {result.width_before} -> {result.width_after}: the kept "
            f"directions hold {result.energy_kept:.1%} of its energy (the best coordinates: "
            f"{result.energy_kept_coordinates:.1%}; {result.tokens:,} tokens)"
        )
        self.on_compacted(result.compact, message)
        return True

    # ---- vocabulary ---------------------------------------------------------------------
    def prune_vocabulary(self, spec, tokenizer, token_ids) -> Any | None:
        """End of training: keep only the tokens of ``token_ids`` (the training set's) that
        ``spec`` (a recipe ``vocabulary`` block) keeps; the new tokenizer, or None when there is
        nothing to do (no block, or a vocabulary pruned before training).

        Training never changes rows of tokens that do not occur, so dropping them changes no
        output on the training distribution."""
        if spec is None or self.vocab_record is not None:
            return None
        result = prune_vocabulary_by_counts(self.model, tokenizer, token_ids, min_count=spec.min_count, dropped=spec.dropped)
        self.vocab_record = result.record()
        self.vocab_id_map = result.id_map()
        return result.tokenizer

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, checkpoint: str | os.PathLike, involved: bool) -> dict[str, Any]:
        """Pruning's part of a checkpoint: tensors as files in ``checkpoint``, the rest as the
        entries this returns (for the trainer's state file)."""
        state: dict[str, Any] = {}
        if involved:
            state["structure"] = Structure.from_model(self.model).to_dict()
        if self.mask_state is not None:
            masks = self.mask_state.state_dict()
            weight_masks = masks.pop("weight_masks")
            state["mask_state"] = masks
            if weight_masks:
                save_file({k: v.cpu().contiguous() for k, v in weight_masks.items()}, os.path.join(checkpoint, MASKS_FILENAME))
        if self.pruner is not None:
            state["stage_initial"] = self.pruner.initial.to_dict()
            accumulator = self.pruner.accumulator
            if accumulator is not None and accumulator.criterion != "magnitude" and accumulator.num_updates:
                save_file(accumulator.state_dict(), os.path.join(checkpoint, IMPORTANCE_FILENAME))
        if self.rotation_record is not None:
            state["hidden_rotation"] = self.rotation_record
        return state

    def restore(self, saved: dict[str, Any], checkpoint: str | os.PathLike) -> None:
        """Before Trainer loads a checkpoint's weights: the model takes the checkpoint's shapes
        (it was compacted), and the masks and importance sums wait for the stage they belong to
        (:meth:`begin_stage`)."""
        if saved.get("structure"):
            target = Structure.from_dict(saved["structure"])
            if target != Structure.from_model(self.model):
                self.on_compacted(compact(self.model, target, check_export=False), None)
        if saved.get("hidden_rotation"):
            self.rotation_record = saved["hidden_rotation"]
        masks_file = Path(checkpoint, MASKS_FILENAME)
        importance_file = Path(checkpoint, IMPORTANCE_FILENAME)
        self._resume = {
            "importance_file": str(importance_file) if importance_file.is_file() else None,
            "mask_state": saved.get("mask_state"),
            "masks_file": str(masks_file) if masks_file.is_file() else None,
            "stage_initial": saved.get("stage_initial"),
            "stage_index": saved.get("stage_index"),
        }
