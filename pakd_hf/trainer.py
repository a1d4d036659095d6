"""PaKDTrainer: a `transformers.Trainer` that distils a frozen teacher into the student,
stage by stage, as a recipe says.

It works only through Trainer's own hooks: `set_initial_training_values` (the total number of
steps is the sum of the stages), `create_optimizer` / `create_scheduler` (a fresh optimizer and
LR schedule per stage, with the stage's overrides), `get_batch_samples` (the size of the
gradient-accumulation window), `compute_loss` (distillation), `log` (loss components) and a
callback (stage switches, checkpoint extras). The training loop itself is Trainer's.

With no teacher and no recipe it is exactly `Trainer`.

A training set may carry the teacher's logits in a `teacher_logits` column (see
`add_teacher_logits`): a stage that distils logits only then reads them instead of running
the teacher, which is most of a small student's step time. Stages that distil hidden states
or attention still run the teacher.
"""

from __future__ import annotations

import json
import logging
import math
import os
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.optimization import get_scheduler
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import is_checkpoint_folder
from .distill import (
    HiddenProjections,
    attention_kl_per_sample,
    hidden_per_sample,
    logit_kd_per_sample,
    logit_mse_per_sample,
    resolve_layer_map,
    TOKEN_LOSSES,
    check_plain_head,
    last_hidden_state,
    token_kd_per_sample,
)
from .recipe import Recipe, RecipeError, Stage, check_layer_maps, load_recipe

if TYPE_CHECKING:
    from .prune import MaskState
    from .prune.controller import StagePruner

__all__ = ["PaKDTrainer", "add_teacher_logits", "TEACHER_LOGITS"]

logger = logging.getLogger(__name__)

STATE_FILENAME = "pakd_state.json"
PROJECTIONS_FILENAME = "pakd_distill_projections.safetensors"
MASKS_FILENAME = "pakd_masks.safetensors"
IMPORTANCE_FILENAME = "pakd_importance.safetensors"
COMPONENTS = ("task", "kd_logits", "kd_hidden", "kd_attn")
TEACHER_LOGITS = "teacher_logits"


def add_teacher_logits(dataset, teacher: nn.Module, tokenizer, batch_size: int = 128, teacher_token_ids=None):
    """``dataset`` (tokenized, unpadded) with the teacher's logits as a ``teacher_logits`` column.

    ``teacher_token_ids``: for data tokenized with a student's pruned vocabulary, the map from
    its ids to the teacher's (``VocabPruneResult.teacher_ids()``; what the trainer applies).

    One inference pass over the data (batches of similar length, so little padding), run once
    instead of once per epoch: worth it when a stage trains on the same data for several
    epochs with logit distillation only. The teacher must be the one the trainer gets, in
    eval mode, on the same inputs (no augmentation applied later).
    """
    from transformers import DataCollatorWithPadding, default_data_collator

    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in dataset.column_names]
    rows = dataset.select_columns(keys)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    # Without a tokenizer the rows must already have one length (nothing to pad with).
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt") if tokenizer is not None else default_data_collator
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    out: list = [None] * len(rows)
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="teacher logits", unit="batch"):
            idx = order[start : start + batch_size]
            columns = rows[idx]  # one read per batch, not per row
            features = [dict(zip(columns, values)) for values in zip(*columns.values())]
            batch = {k: v.to(device) for k, v in collate(features).items()}
            if teacher_token_ids is not None:
                batch["input_ids"] = teacher_token_ids.to(device)[batch["input_ids"]]
            logits = teacher(**batch).logits.float().cpu().tolist()
            for i, row in zip(idx, logits):
                out[i] = row
    teacher.train(was_training)
    if TEACHER_LOGITS in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_LOGITS)
    return dataset.add_column(TEACHER_LOGITS, out)


# Trainer methods that PaKDTrainer overrides although transformers does not document them as
# hooks. A transformers release that renames one would leave our override dead and the run
# silently wrong (teacher logits dropped by the column filter, checkpoints pushed masked), so
# PaKDTrainer refuses to start when one is missing (`check_trainer_private_methods`), and a test
# keeps this list complete.
TRAINER_PRIVATE_OVERRIDES = {
    "_set_signature_columns_if_needed": "keeps the teacher_logits column through Trainer's column filter",
    "_push_from_checkpoint": "stops Trainer from pushing masked checkpoints (and training_args.bin)",
}


def check_trainer_private_methods() -> None:
    """Raise a RuntimeError naming the method when this transformers lacks one PaKDTrainer overrides."""
    import transformers

    missing = [name for name in TRAINER_PRIVATE_OVERRIDES if not callable(getattr(Trainer, name, None))]
    if missing:
        raise RuntimeError(
            f"transformers {transformers.__version__} has no Trainer.{missing[0]} (PaKDTrainer overrides it: "
            f"{TRAINER_PRIVATE_OVERRIDES[missing[0]]}); install a transformers release pakd-hf supports"
        )


@dataclass(frozen=True)
class StageSpan:
    """Where a stage sits on the global optimizer-step axis: steps [start, end)."""

    index: int
    stage: Stage
    start: int
    end: int

    @property
    def steps(self) -> int:
        return self.end - self.start


def _config_get(config, names: tuple[str, ...]):
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _num_layers(model: nn.Module) -> int | None:
    return _config_get(getattr(model, "config", None), ("num_hidden_layers", "encoder_layers", "num_layers", "n_layer"))


def _hidden_width(model: nn.Module) -> int | None:
    return _config_get(getattr(model, "config", None), ("hidden_size", "d_model", "dim", "n_embd"))


def _vocab_size(model: nn.Module) -> int | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(emb, "num_embeddings", None)


def prune_student_vocabulary(student: nn.Module, tokenizer, dataset, recipe):
    """The recipe's `vocabulary` pruning, done before training (`vocabulary.at: start`).

    Counts the tokens of `dataset["input_ids"]` (the real training set, tokenized with
    `tokenizer`), slices the student's embedding rows in place and returns the student's new
    tokenizer: tokenize the training and evaluation data with it. A `PaKDTrainer` given this
    student maps its inputs back to the teacher's ids (same tokens, same positions) and records
    the pruning in `pakd.json`.
    """
    from .prune.vocab import prune_vocabulary_by_counts

    spec = load_recipe(recipe).vocabulary
    if spec is None:
        raise RecipeError("vocabulary", "the recipe has no vocabulary block to apply")
    result = prune_vocabulary_by_counts(student, tokenizer, dataset["input_ids"], min_count=spec.min_count, dropped=spec.dropped)
    logger.info(f"[pakd] vocabulary: kept {result.vocab_size:,} of {result.vocab_size_original:,} tokens")
    return result.tokenizer


def _default_labels(id2label: dict | None) -> bool:
    return not id2label or all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def check_label_spaces(student: nn.Module, teacher: nn.Module) -> None:
    """Raise a one-line error when the teacher predicts a different label space than the student."""
    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if s_cfg is None or t_cfg is None:
        return
    s_n, t_n = getattr(s_cfg, "num_labels", None), getattr(t_cfg, "num_labels", None)
    if s_n is not None and t_n is not None and s_n != t_n:
        raise ValueError(
            f"teacher_model predicts {t_n} labels but the student predicts {s_n}: distillation needs the "
            "same label space; fine-tune the teacher on the student's labels first"
        )
    s_map = {int(k): v for k, v in (getattr(s_cfg, "id2label", None) or {}).items()}
    t_map = {int(k): v for k, v in (getattr(t_cfg, "id2label", None) or {}).items()}
    if not _default_labels(s_map) and not _default_labels(t_map) and s_map != t_map:
        raise ValueError(
            f"teacher_model labels {t_map} differ from the student's {s_map}: distillation needs the same "
            "labels in the same order; align config.id2label of both models"
        )


class _PaKDCallback(TrainerCallback):
    """Stage switches and checkpoint extras. Owned by one PaKDTrainer."""

    def __init__(self, trainer: "PaKDTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._set_attention_for_stage()
        if self.trainer._begin_stage_pruning():
            self.trainer.rebuild_optimizer()  # the first stage rotated the hidden stream: new parameters
        self.trainer._announce_stage()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._sync_projection_grads()
        self.trainer._before_optimizer_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._after_optimizer_step(state.global_step)
        self.trainer._maybe_advance_stage(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._finish_pruning()
        self.trainer._prune_vocabulary()
        self.trainer._restore_attention()

    def on_save(self, args, state, control, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(checkpoint):
            self.trainer._complete_checkpoint(checkpoint)


class PaKDTrainer(Trainer):
    """A drop-in [`~transformers.Trainer`] for multi-stage pruning and knowledge distillation.

    Args:
        model: the student.
        teacher_model: a frozen teacher (eval mode, no gradients, never saved, never optimised).
        args: usually [`PaKDTrainingArguments`]; any `TrainingArguments` works.
        recipe: a path, a mapping or a [`Recipe`]; overrides `args.recipe`.
        vocabulary_dataset: the tokenized data whose tokens vocabulary pruning keeps (default:
            `train_dataset`). Pass the real training set when training on a transfer set of
            perturbed copies, so the copies do not lift rare tokens over `min_count`.
        **kwargs: every other `Trainer` argument, unchanged.
    """

    _tag_names = ["pakd", "knowledge-distillation"]

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher_model: nn.Module | None = None,
        args=None,
        recipe: "str | os.PathLike | dict | Recipe | None" = None,
        vocabulary_dataset: Any = None,
        **kwargs: Any,
    ):
        check_trainer_private_methods()
        if recipe is None and args is not None:
            recipe = getattr(args, "recipe", None)
        # Everything that can be wrong with the inputs is checked here, before Trainer.__init__
        # touches output_dir or the models.
        self.recipe: Recipe | None = load_recipe(recipe) if recipe is not None else None
        self._check_inputs(model, teacher_model, {**kwargs, "vocabulary_dataset": vocabulary_dataset})
        self.teacher_model = teacher_model
        self.vocabulary_dataset = vocabulary_dataset
        self._spans: list[StageSpan] | None = None
        self._stage_idx = 0
        self._window_samples: int | None = None
        self._mask_state: MaskState | None = None
        self._pruner: StagePruner | None = None
        self._resume_pruning: dict | None = None
        self._save_total_limit: int | None = None  # the user's, applied after each checkpoint is complete
        self._vocab_record: dict | None = None
        self._rotation_record: dict | None = None
        self._vocab_id_map: torch.Tensor | None = None
        # A student whose vocabulary was pruned before training (prune_student_vocabulary):
        # its ids -> the teacher's, when the teacher kept the original vocabulary.
        self._teacher_token_ids: torch.Tensor | None = None
        pruned = getattr(model, "_pakd_vocabulary", None)
        if pruned is not None:
            self._vocab_record = pruned.record()
            if teacher_model is not None and _vocab_size(teacher_model) != _vocab_size(model):
                self._teacher_token_ids = pruned.teacher_ids()

        super().__init__(model=model, args=args, **kwargs)

        if teacher_model is not None:
            teacher_model.eval()
            teacher_model.requires_grad_(False)
            # Moved, never wrapped: the teacher takes no gradients, so DDP has nothing to sync.
            teacher_model.to(self.args.device)

        self._attn_restore: dict[int, tuple[nn.Module, str]] = {}
        # Compression progress in the logs (see _compression_metrics): the shapes the student
        # starts from, and the last figures, recomputed only when the structure changes.
        self._start_structure = None  # set by train(), before a resumed checkpoint compacts the model
        self._cost_inputs: dict | None = None
        self._start_cost: tuple[float, float, dict] | None = None
        self._progress: tuple[str, dict[str, float]] | None = None

        self.distill_projections: HiddenProjections | None = self._build_projections(model, teacher_model)
        self._component_sums = torch.zeros(len(COMPONENTS), dtype=torch.float64)
        self._component_counts = torch.zeros(len(COMPONENTS), dtype=torch.float64)
        if self.recipe is not None or teacher_model is not None:
            self.add_callback(_PaKDCallback(self))

    # ---- input checks -----------------------------------------------------------------
    def _check_inputs(self, model, teacher, kwargs) -> None:
        recipe = self.recipe
        if teacher is not None:
            if teacher is model:
                raise ValueError("teacher_model is the student itself: pass a separate (frozen) teacher model")
            if model is not None:
                check_label_spaces(model, teacher)
        if recipe is None:
            return
        pruned = getattr(model, "_pakd_vocabulary", None)
        if pruned is not None and teacher is not None and _vocab_size(teacher) not in (_vocab_size(model), pruned.vocab_size_original):
            raise ValueError(
                f"the student's vocabulary was pruned from {pruned.vocab_size_original:,} tokens, but the teacher has "
                f"{_vocab_size(teacher):,}: pass the teacher the student was pruned from"
            )
        if recipe.vocabulary is not None and recipe.vocabulary.at == "start" and pruned is None:
            raise RecipeError(
                "vocabulary.at",
                "'start' prunes before the data is tokenized: call pakd_hf.trainer.prune_student_vocabulary(student, "
                "tokenizer, train_dataset, recipe) and tokenize with the tokenizer it returns, or set at: end",
            )
        if recipe.vocabulary is not None and pruned is None:
            tokenizer = kwargs.get("processing_class")
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is None or type(backend.model).__name__ != "WordPiece":
                raise RecipeError(
                    "vocabulary",
                    "vocabulary pruning needs the student's fast WordPiece tokenizer (BERT family): pass "
                    "PaKDTrainer(processing_class=tokenizer) or remove the block",
                )
            name = "vocabulary_dataset" if kwargs.get("vocabulary_dataset") is not None else "train_dataset"
            columns = getattr(kwargs.get(name), "column_names", None) or []
            if "input_ids" not in columns:
                raise RecipeError("vocabulary", f"vocabulary pruning counts the tokens of {name}['input_ids'], which it lacks")
        if recipe.needs_teacher and teacher is None:
            stage = next(s for s in recipe.stages if s.distillation is not None)
            raise ValueError(
                f"recipe '{recipe.name}' distils in stage '{stage.name}' but no teacher_model was given: "
                "pass PaKDTrainer(teacher_model=...) or remove the stage's distillation block"
            )
        optimizers = kwargs.get("optimizers")
        if optimizers is not None and any(o is not None for o in optimizers):
            raise ValueError(
                "optimizers=(...) cannot be used with a recipe: each stage builds a fresh optimizer and LR "
                "schedule; pass optimizer_cls_and_kwargs=(cls, kwargs) or set args.optim instead"
            )
        if model is not None and any(s.pruning is not None for s in recipe.stages):
            from .prune.controller import dry_run

            dry_run(model, recipe.stages)  # unsupported architecture, impossible targets, head_dim
        if model is None or teacher is None:
            return
        n_s, n_t = _num_layers(model), _num_layers(teacher)
        for i, stage in enumerate(recipe.stages):
            dist = stage.distillation
            if dist is None:
                continue
            for block, kind, offset in ((dist.hidden, "hidden", 1), (dist.attention, "attention", 0)):
                if block is None:
                    continue
                path = f"stages[{i}].distillation.{kind}.layer_map"
                if n_s is None or n_t is None:
                    raise RecipeError(
                        path,
                        f"cannot map layers of {type(model).__name__} / {type(teacher).__name__}: their configs "
                        "give no layer count (num_hidden_layers / encoder_layers)",
                    )
        if n_s is not None and n_t is not None:
            # Each stage's maps against the layers the earlier stages leave, not only the first stage's.
            check_layer_maps(recipe, n_s, n_t)
        for i, stage in enumerate(recipe.stages):
            dist = stage.distillation
            if dist is None:
                continue
            if dist.hidden is not None and (_hidden_width(model) is None or _hidden_width(teacher) is None):
                raise RecipeError(
                    f"stages[{i}].distillation.hidden",
                    "the models' configs give no hidden width (hidden_size / d_model) to build projections",
                )

    def _build_projections(self, model, teacher) -> HiddenProjections | None:
        if self.recipe is None or teacher is None:
            return None
        if not any(s.distillation is not None and s.distillation.hidden is not None for s in self.recipe.stages):
            return None
        n_s = _num_layers(model)
        prunes_hidden = any(s.pruning is not None and s.pruning.hidden is not None for s in self.recipe.stages)
        proj = HiddenProjections(list(range(n_s + 1)), _hidden_width(model), _hidden_width(teacher), always=prunes_hidden)
        if not len(proj.maps):
            return None
        record = getattr(model, "_pakd_structure", None)
        if record is not None:
            proj.inputs = list(record.hidden)  # an already-pruned student: inputs in its original coordinates
        return proj.to(self.args.device)

    # ---- stages ------------------------------------------------------------------------
    @property
    def current_stage(self) -> Stage | None:
        """The stage being trained (None without a recipe)."""
        if self.recipe is None:
            return None
        return self.recipe.stages[self._stage_idx]

    @property
    def stage_spans(self) -> list[StageSpan] | None:
        """Each stage's [start, end) optimizer steps, known once training has started."""
        return self._spans

    def _plan(self, steps_per_epoch: int | None) -> list[StageSpan]:
        spans, start = [], 0
        for i, stage in enumerate(self.recipe.stages):
            if stage.steps is not None:
                n = stage.steps
            elif steps_per_epoch is None:
                raise RecipeError(
                    f"stages[{i}].epochs",
                    "the training dataset has no length, so epochs cannot be counted; give the stage 'steps'",
                )
            else:
                n = max(1, math.ceil(stage.epochs * steps_per_epoch))
            pruning = stage.pruning
            if pruning is not None and max(pruning.start_step, pruning.end_step or 0) > n:
                key = "end_step" if (pruning.end_step or 0) > n else "start_step"
                raise RecipeError(f"stages[{i}].pruning.{key}", f"is past the stage's last step ({n})")
            spans.append(StageSpan(i, stage, start, start + n))
            start += n
        return spans

    def _stage_for_step(self, step: int) -> int:
        for span in self._spans:
            if step < span.end:
                return span.index
        return len(self._spans) - 1

    def set_initial_training_values(self, args, dataloader):
        if self.recipe is None:
            return super().set_initial_training_values(args, dataloader)
        from transformers.trainer_utils import has_length

        if not has_length(dataloader):
            self._spans = self._plan(None)
            total = self._spans[-1].end
            batch = self.get_total_train_batch_size(args)
            import sys

            return sys.maxsize, total, batch * total, batch * total, batch, total * args.gradient_accumulation_steps, total
        values = list(super().set_initial_training_values(args, dataloader))
        steps_per_epoch = values[1]
        self._spans = self._plan(steps_per_epoch)
        total = self._spans[-1].end
        values[0] = math.ceil(total / steps_per_epoch)  # num_train_epochs
        values[3] = total * values[4]  # num_train_samples
        values[6] = total  # max_steps
        return tuple(values)

    def create_optimizer(self, model=None):
        if self.recipe is None and self.distill_projections is None:
            return super().create_optimizer(model)
        creating = self.optimizer is None
        if creating and self._spans is not None:
            self._stage_idx = self._stage_for_step(self.state.global_step)
        optimizer = super().create_optimizer(model)
        if creating:
            stage = self.current_stage
            weight_decay = self.args.weight_decay
            if stage is not None and stage.weight_decay is not None:
                weight_decay = stage.weight_decay
                for group in optimizer.param_groups:
                    if group.get("weight_decay", 0.0) > 0.0:
                        group["weight_decay"] = weight_decay
            if self.distill_projections is not None:
                optimizer.add_param_group(
                    {"params": list(self.distill_projections.parameters()), "weight_decay": weight_decay}
                )
            if stage is not None and stage.learning_rate is not None:
                for group in optimizer.param_groups:
                    group["lr"] = stage.learning_rate
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.recipe is None or self._spans is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            span = self._spans[self._stage_idx]
            stage = span.stage
            if stage.warmup_steps is not None:
                warmup = stage.warmup_steps
            elif stage.warmup_ratio is not None:
                warmup = math.ceil(stage.warmup_ratio * span.steps)
            else:
                warmup = self.args.get_warmup_steps(span.steps)
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=optimizer if optimizer is not None else self.optimizer,
                num_warmup_steps=warmup,
                num_training_steps=span.steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _maybe_advance_stage(self, global_step: int) -> None:
        if self._spans is None:
            return
        span = self._spans[self._stage_idx]
        if global_step < span.end:
            return
        compacted = self._finish_pruning(global_step)
        if self._stage_idx + 1 < len(self._spans):
            self._start_stage(self._stage_idx + 1)
        elif compacted:
            self.rebuild_optimizer()  # a checkpoint at this step must hold an optimizer of the new shapes

    def _start_stage(self, index: int) -> None:
        """Enter stage `index`: a fresh optimizer and LR schedule for the stage's steps."""
        self._stage_idx = index
        self._set_attention_for_stage()
        self._begin_stage_pruning()
        self.rebuild_optimizer()
        self._announce_stage()

    def _set_attention_for_stage(self) -> None:
        """Eager attention only while a stage distils attention maps; the model's own otherwise.

        Only the eager implementation returns attention probabilities, and it is several times
        slower than sdpa on CPU, so it is switched on per stage (student and teacher) and the
        original implementation is restored as soon as a stage no longer needs it, and at the
        end of training (the saved config keeps the user's choice).
        """
        stage = self.current_stage
        needs = stage is not None and stage.distillation is not None and stage.distillation.attention is not None
        if not needs:
            self._restore_attention()
            return
        for m in (self.model, self.teacher_model):
            impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
            if m is None or not hasattr(m, "set_attn_implementation") or impl == "eager":
                continue
            self._attn_restore[id(m)] = (m, impl)
            m.set_attn_implementation("eager")

    def _restore_attention(self) -> None:
        for m, impl in self._attn_restore.values():
            if impl is not None:
                m.set_attn_implementation(impl)
        self._attn_restore.clear()

    # ---- pruning -----------------------------------------------------------------------
    def _begin_stage_pruning(self) -> bool:
        """Start the current stage's pruning block (masks persist across stages until compacted).

        Returns True when the model's parameters were replaced (a hidden rotation), so the
        caller rebuilds the optimizer."""
        from .prune import MaskState, Structure
        from .prune.controller import StagePruner

        resume, self._resume_pruning = self._resume_pruning, None
        if resume is not None and self._mask_state is None and resume.get("mask_state"):
            self._mask_state = MaskState(self.model)
            masks = {}
            if resume.get("masks_file"):
                from safetensors.torch import load_file

                masks = load_file(resume["masks_file"])
            self._mask_state.load_state_dict({**resume["mask_state"], "weight_masks": masks})
            self._mask_state.attach()
            self._mask_state.apply()
        stage = self.current_stage
        if stage is None or stage.pruning is None or self._spans is None:
            self._pruner = None
            return False
        spec = stage.pruning
        rotated = False
        if spec.hidden is not None and spec.hidden.method == "rotate":
            rotated = self._rotate_hidden(spec.hidden)
            spec = dataclasses.replace(spec, hidden=None)  # done: the schedule prunes the other kinds
        span = self._spans[self._stage_idx]
        initial = None
        if resume is not None and resume.get("stage_initial") and resume.get("stage_index") == self._stage_idx:
            initial = Structure.from_dict(resume["stage_initial"])
        self._pruner = StagePruner(
            self.model,
            spec,
            stage_start=span.start,
            stage_end=span.end,
            mask_state=self._mask_state,
            reduce=self._reduce_sum,
            initial=initial,
            sample_inputs=self._sample_inputs() if stage.pruning.budget is not None and stage.pruning.budget.metric == "macs" else None,
        )
        self._mask_state = self._pruner.mask_state
        if initial is not None and resume.get("importance_file") and self._pruner.accumulator is not None:
            # Taylor / movement sums of the steps before the checkpoint: without them a resumed
            # stage would rank units on its remaining steps only.
            from safetensors.torch import load_file

            self._pruner.accumulator.load_state_dict(load_file(resume["importance_file"]))
        return rotated

    def _rotate_hidden(self, spec) -> bool:
        """`hidden.method: rotate`: rotate the student's stream onto its principal directions
        (measured on `spec.calibration` training examples) and cut it to the target. A student
        already at the target (a resumed stage) is left alone. Returns True when it rotated."""
        from .prune import Structure
        from .prune.controller import target_count
        from .prune.rotate import rotate_hidden

        current = Structure.from_model(self.model)
        target = target_count(spec, Structure.full(*current.original_sizes()), "hidden")
        if len(current.hidden) <= target:
            return False
        if self._mask_state is not None:
            if self._mask_state.structure() != self._mask_state.base:
                raise ValueError(
                    f"stage '{self.current_stage.name}' rotates the hidden stream, but an earlier stage left "
                    "structural masks uncompacted: set compact: true on it"
                )
            if self._mask_state.weight_masks:
                raise ValueError(
                    f"stage '{self.current_stage.name}' rotates the hidden stream, which would fill in the "
                    "unstructured / N:M sparsity of an earlier stage: sparsify after the rotation"
                )
            # The rotation compacts the model: the earlier stages' mask state no longer fits it.
            self._mask_state.detach()
            self._mask_state = None
        batches, seen = [], 0
        skip = set(self.label_names or []) | {TEACHER_LOGITS, "labels"}
        for batch in self.get_train_dataloader():
            batches.append({k: v for k, v in batch.items() if torch.is_tensor(v) and k not in skip})
            seen += _batch_size(batch)
            if seen >= spec.calibration:
                break
        result = rotate_hidden(self.model, batches, target, projections=self.distill_projections)
        if self.accelerator.num_processes > 1:
            # Each process measured its own batches: all take process 0's rotated model.
            import torch.distributed as dist

            modules = [self.model] + ([self.distill_projections] if self.distill_projections is not None else [])
            for module in modules:
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=0)
        self._rotation_record = result.record()
        message = (
            f"[pakd] hidden stream rotated and cut {result.width_before} -> {result.width_after}: the kept "
            f"directions hold {result.energy_kept:.1%} of its energy (the best coordinates: "
            f"{result.energy_kept_coordinates:.1%}; {result.tokens:,} tokens)"
        )
        self._after_compaction(result.compact, message)
        return True

    def _sample_inputs(self) -> dict:
        """One training sample (no labels), for counting MACs of a budget."""
        batch = next(iter(self.get_train_dataloader()))
        skip = set(self.label_names or []) | {TEACHER_LOGITS}
        return {k: v[:1] for k, v in batch.items() if torch.is_tensor(v) and k not in skip}

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes <= 1:
            return tensor
        return self.accelerator.reduce(tensor.to(self.args.device), reduction="sum").to(tensor.device)

    def _before_optimizer_step(self, global_step: int) -> None:
        if self._pruner is not None:
            self._pruner.before_optimizer_step(global_step)
        elif self._mask_state is not None:
            self._mask_state.mask_gradients()

    def _after_optimizer_step(self, global_step: int) -> None:
        if self._pruner is not None:
            self._pruner.after_optimizer_step(global_step)
        elif self._mask_state is not None:
            self._mask_state.apply()

    def _finish_pruning(self, global_step: int | None = None) -> bool:
        """End the current stage's pruning: final masks, then compaction if the recipe says so.

        Also called at the end of training, so structural masks never reach a saved model as
        zeros (unstructured and N:M masks stay: they are saved dense). Returns True when the
        model was compacted.
        """
        from .prune import compact

        step = self.state.global_step if global_step is None else global_step
        result = None
        if self._pruner is not None:
            result = self._pruner.finish(step)
            self._pruner = None
        if result is None and global_step is None and self._mask_state is not None:
            if self._mask_state.structure() != self._mask_state.base:
                result = compact(self.model, self._mask_state, check_export=False)
        if result is None:
            return False
        self._after_compaction(result)
        return True

    def _prune_vocabulary(self) -> None:
        """End of training: keep only the tokens the training set uses (recipe `vocabulary`;
        counted on `vocabulary_dataset` when given).

        Training never changes rows of tokens that do not occur, so dropping them changes no
        output on the training distribution. The tokenizer becomes the rewritten one; data
        tokenized with the original tokenizer is remapped in `prediction_step`, so
        `evaluate()` / `predict()` keep working on it.
        """
        spec = self.recipe.vocabulary if self.recipe is not None else None
        if spec is None or self._vocab_record is not None:
            return
        from .prune.vocab import prune_vocabulary_by_counts

        source = self.vocabulary_dataset if self.vocabulary_dataset is not None else self.train_dataset
        result = prune_vocabulary_by_counts(self.model, self.processing_class, source["input_ids"],
                                            min_count=spec.min_count, dropped=spec.dropped)
        self.processing_class = result.tokenizer
        self._vocab_record = result.record()
        self._vocab_id_map = result.id_map()
        message = (
            f"[pakd] vocabulary: kept {self._vocab_record['vocab_size']:,} of "
            f"{self._vocab_record['vocab_size_original']:,} tokens"
        )
        logger.info(message)
        if self.is_world_process_zero():
            for cb in self.callback_handler.callbacks:
                bar = getattr(cb, "training_bar", None) if isinstance(cb, ProgressCallback) else None
                if bar is not None:
                    bar.write(message)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if TEACHER_LOGITS not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, TEACHER_LOGITS]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if k != TEACHER_LOGITS}
        if self._vocab_id_map is not None and torch.is_tensor(inputs.get("input_ids")):
            ids = inputs["input_ids"]
            inputs = {**inputs, "input_ids": self._vocab_id_map.to(ids.device)[ids]}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _after_compaction(self, result, message: str | None = None) -> None:
        """Parameters were replaced: fix what holds them (projections, DDP wrapper)."""
        structure = result.structure
        if self.distill_projections is not None:
            self.distill_projections.keep_inputs(structure.hidden)
        if self.model_wrapped is not self.model and self.accelerator.num_processes > 1:
            # DDP registered gradient hooks on the old parameters: wrap the compacted model anew.
            self.model_wrapped = self.accelerator.prepare_model(self.model)
        counts = structure.counts()
        message = message or (
            f"[pakd] compacted: {result.params_before:,} -> {result.params_after:,} parameters ({counts})"
        )
        logger.info(message)
        if self.is_world_process_zero():
            for cb in self.callback_handler.callbacks:
                bar = getattr(cb, "training_bar", None) if isinstance(cb, ProgressCallback) else None
                if bar is not None:
                    bar.write(message)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # After a compaction under DDP, Trainer's loop still holds the old wrapper.
        if model is not self.model_wrapped and self.model_wrapped is not self.model:
            model = self.model_wrapped
        return super().training_step(model, inputs, num_items_in_batch)

    def rebuild_optimizer(self) -> None:
        """Build a new optimizer and LR scheduler for the current stage and hand them to the loop.

        Trainer's loop reads `self.optimizer` / `self.lr_scheduler` at every step, so replacing
        them here takes effect at the next optimizer step. Call it whenever the set or the
        shapes of the trainable parameters change, or the old optimizer keeps stepping tensors
        that are no longer in the model.
        """
        old = self.optimizer
        self.optimizer = None
        self.lr_scheduler = None
        self.create_optimizer()
        self.optimizer = self.accelerator.prepare(self.optimizer)
        registered = getattr(self.accelerator, "_optimizers", None)
        if isinstance(registered, list) and old in registered:
            registered.remove(old)  # let the old optimizer's state be freed
        self.create_scheduler(num_training_steps=self._spans[self._stage_idx].steps if self._spans else 1)
        self.callback_handler.optimizer = self.optimizer
        self.callback_handler.lr_scheduler = self.lr_scheduler

    def _announce_stage(self) -> None:
        if self.recipe is None or self._spans is None:
            return
        span = self._spans[self._stage_idx]
        stage = span.stage
        lr = stage.learning_rate if stage.learning_rate is not None else self.args.learning_rate
        what = "distil" if stage.distillation is not None else "train"
        message = (
            f"[pakd] stage {span.index + 1}/{len(self._spans)} '{stage.name}' ({what}): "
            f"steps {span.start}-{span.end}, lr {lr:g}"
        )
        logger.info(message)
        if not self.is_world_process_zero():
            return
        for cb in self.callback_handler.callbacks:
            bar = getattr(cb, "training_bar", None) if isinstance(cb, ProgressCallback) else None
            if bar is not None:
                bar.set_description(f"stage {stage.name}")
                bar.write(message)

    # ---- losses ------------------------------------------------------------------------
    @property
    def loss_is_scaled_for_ga(self) -> bool | None:  # type: ignore[override]
        # The distillation loss is normalised over the whole accumulation window (see
        # compute_loss); otherwise Trainer's own rule applies.
        return True if self._distilling() else None

    def _distilling(self) -> bool:
        stage = self.current_stage
        return self.teacher_model is not None and stage is not None and stage.distillation is not None

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window_samples = sum(_batch_size(b) for b in batch_samples) or None
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cached = inputs.get(TEACHER_LOGITS)
        inputs = {k: v for k, v in inputs.items() if k != TEACHER_LOGITS}
        if not (model.training and self._distilling()):
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss, outputs = self._distillation_loss(model, inputs, cached)
        return (loss, outputs) if return_outputs else loss

    def _distillation_loss(self, model, inputs, cached_logits: torch.Tensor | None = None):
        """alpha * kd_logits + (1 - alpha) * task + w_h * kd_hidden + w_a * kd_attn.

        Each term is summed over the micro-batch's samples and divided by the number of samples
        in the whole accumulation window, so accumulating micro-batches gives the gradient of
        one big batch (and `loss_is_scaled_for_ga` is True).
        """
        dist = self.current_stage.distillation
        label_names = self.label_names or []
        has_labels = bool(label_names) and all(inputs.get(n) is not None for n in label_names)
        flags = {}
        if dist.hidden is not None:
            flags["output_hidden_states"] = True
        if dist.attention is not None:
            flags["output_attentions"] = True

        unwrapped = self.accelerator.unwrap_model(model)
        # Causal LMs with a token-level loss: the LM heads run on chunks of the last hidden states
        # (distill.token_kd_per_sample), so the models compute the logits of one position only and
        # the decoders' last hidden states are caught by a hook (no tuple of every layer's states
        # unless hidden distillation asks for it). `loss: mse` keeps the full-logit path.
        causal = dist.loss in TOKEN_LOSSES and _is_causal_lm(unwrapped)
        lm_labels = None
        if causal:
            flags = {**flags, "logits_to_keep": 1}
            lm_labels = inputs.get("labels")
            if lm_labels is None:  # no labels: every attended token is one
                mask = inputs.get("attention_mask")
                lm_labels = inputs["input_ids"] if mask is None else inputs["input_ids"].masked_fill(mask.eq(0), -100)
            inputs = {k: v for k, v in inputs.items() if k != "labels"}
        student_inputs = {**inputs, **flags}
        labels = None
        if has_labels and not causal and (self.label_smoother is not None or self.compute_loss_func is not None):
            labels = student_inputs.pop("labels")
        with last_hidden_state(unwrapped if causal else None) as s_last:
            outputs = model(**student_inputs)
        s_logits = outputs["logits"]
        if cached_logits is not None and not flags:
            # Logits only, and the data carries them (add_teacher_logits): no teacher pass.
            t_logits = cached_logits.to(s_logits.device)
        else:
            teacher_inputs = {k: v for k, v in inputs.items() if k not in label_names}
            if self._teacher_token_ids is not None and torch.is_tensor(teacher_inputs.get("input_ids")):
                ids = teacher_inputs["input_ids"]
                teacher_inputs["input_ids"] = self._teacher_token_ids.to(ids.device)[ids]
            # no_grad rather than inference_mode: teacher outputs are loss targets, and autograd
            # must be able to save them for the student's backward pass.
            with torch.no_grad(), last_hidden_state(self.teacher_model if causal else None) as t_last:
                teacher_outputs = self.teacher_model(**teacher_inputs, **flags)
            t_logits = teacher_outputs["logits"]
        token_kd = None
        if causal:
            s_head, t_head = unwrapped.get_output_embeddings(), self.teacher_model.get_output_embeddings()
            self._check_plain_head(unwrapped, s_head, s_last[0], s_logits)
            self._check_plain_head(self.teacher_model, t_head, t_last[0], t_logits)
            token_kd = token_kd_per_sample(
                s_last[0], s_head, t_last[0], t_head, lm_labels,
                temperature=dist.temperature, loss=dist.loss, beta=dist.beta, chunk_size=dist.chunk_size,
            )
        n = s_logits.shape[0]
        window = self._window_samples or n
        sums: dict[str, torch.Tensor] = {}

        task = None
        if causal:
            sums["task"] = token_kd[1].sum()  # next-token cross-entropy, per sample
            has_labels = True
        elif has_labels:
            if labels is not None and self.compute_loss_func is not None:
                task = self.compute_loss_func(outputs, labels, num_items_in_batch=None)
            elif labels is not None:
                task = self.label_smoother(outputs, labels)
            else:
                task = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
            sums["task"] = task * n

        if dist.logits and causal:
            sums["kd_logits"] = token_kd[0].sum()
        elif dist.logits:
            mask = _position_mask(inputs, s_logits)
            if dist.loss == "mse":
                sums["kd_logits"] = logit_mse_per_sample(s_logits, t_logits, mask).sum()
            else:
                sums["kd_logits"] = logit_kd_per_sample(s_logits, t_logits, dist.temperature, mask).sum()

        if dist.hidden is not None:
            s_h, t_h = outputs["hidden_states"], teacher_outputs["hidden_states"]
            pairs = resolve_layer_map(dist.hidden.layer_map, len(s_h) - 1, len(t_h) - 1, "hidden")
            mask = _sequence_mask(inputs, s_h[0])
            per_sample = sum(
                hidden_per_sample(self._project(si, s_h[si]), t_h[ti], mask, dist.hidden.loss) for si, ti in pairs
            ) / len(pairs)
            sums["kd_hidden"] = per_sample.sum()

        if dist.attention is not None:
            s_a, t_a = outputs["attentions"], teacher_outputs["attentions"]
            if not s_a or not t_a:
                raise ValueError(
                    "attention distillation needs attention maps, but the model returned none: use a model "
                    "whose attention implementation returns them (eager)"
                )
            pairs = resolve_layer_map(dist.attention.layer_map, len(s_a), len(t_a), "attention")
            mask = _sequence_mask(inputs, s_a[0][:, 0, :, 0])
            per_sample = sum(attention_kl_per_sample(s_a[si], t_a[ti], mask) for si, ti in pairs) / len(pairs)
            sums["kd_attn"] = per_sample.sum()

        kd_weight = dist.alpha if (has_labels and dist.logits) else 1.0
        task_weight = (1.0 - dist.alpha) if dist.logits else 1.0
        total = s_logits.new_zeros((), dtype=torch.float32)
        if "task" in sums:
            total = total + task_weight * sums["task"]
        if "kd_logits" in sums:
            total = total + kd_weight * sums["kd_logits"]
        if "kd_hidden" in sums:
            total = total + dist.hidden.weight * sums["kd_hidden"]
        if "kd_attn" in sums:
            total = total + dist.attention.weight * sums["kd_attn"]

        for i, name in enumerate(COMPONENTS):
            if name in sums:
                self._component_sums[i] += float(sums[name].detach())
                self._component_counts[i] += n
        return total / window, outputs

    def _check_plain_head(self, model, head, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        """Once per model: see :func:`pakd_hf.distill.check_plain_head`."""
        checked = self.__dict__.setdefault("_plain_heads", set())
        if id(model) not in checked:
            check_plain_head(model, head, hidden, logits)
            checked.add(id(model))

    def _project(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        if self.distill_projections is None:
            return hidden
        return self.distill_projections(index, hidden)

    def _sync_projection_grads(self) -> None:
        """Average the projections' gradients across processes (DDP only syncs the student)."""
        proj = self.distill_projections
        if proj is None or self.accelerator.num_processes <= 1:
            return
        import torch.distributed as dist

        for p in proj.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.accelerator.num_processes

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and (self.recipe is not None or self.teacher_model is not None):
            stats = torch.stack([self._component_sums, self._component_counts]).to(self.args.device)
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            stats = stats.cpu()
            for i, name in enumerate(COMPONENTS):
                if stats[1, i] > 0:
                    logs[name] = round(float(stats[0, i] / stats[1, i]), 6)
            self._component_sums.zero_()
            self._component_counts.zero_()
            if self._spans is not None:
                # The stage of the steps this log covers (a stage switch happens before the log).
                logs["stage"] = self._stage_for_step(max(self.state.global_step - 1, 0))
            if self._pruning_involved():
                logs.update(self._compression_metrics())
        super().log(logs, start_time)

    def _compression_metrics(self) -> dict[str, float]:
        """What the student keeps now, beside the losses in every log (so tensorboard, wandb or
        trackio plot the compression curve): layers, heads, FFN neurons and hidden dims kept (of
        the masks' target mid-stage, of the compact model after), the vocabulary, and the
        parameters and MACs per example of that structure as fractions of the starting model's
        when a stock config holds it (not per-layer shapes mid-stage: counts only then; counted on
        a model built on the meta device, milliseconds, recomputed only when the structure
        changes; MACs on one training example)."""
        from .arch import get_adapter
        from .prune import Structure
        from .prune.budget import model_cost

        model = self.model
        try:
            adapter = get_adapter(model)
        except ValueError:  # a family the pruning engine does not know: nothing to report
            return {}
        structure = self._mask_state.structure() if self._mask_state is not None else Structure.from_model(model, adapter)
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

    # ---- saving and resuming ----------------------------------------------------------
    def _pruning_involved(self) -> bool:
        return self._vocab_record is not None or self._mask_state is not None or getattr(self.model, "_pakd_structure", None) is not None or (
            self.recipe is not None and any(s.pruning is not None for s in self.recipe.stages)
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save plus `pakd_recipe.yaml` and, for pruned students, `pakd.json`.

        A student whose shapes a stock config cannot describe (per-layer shapes, or BERT's
        hidden != heads x head_dim) is saved with generated modeling code instead
        (`pakd_hf.export.save_compact`): `trust_remote_code=True`, or `import pakd_hf`, loads it.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if (_internal_call and self.args.should_save and is_checkpoint_folder(output_dir) and os.path.isdir(output_dir)
                and Path(output_dir).resolve().parent == Path(self.args.output_dir).resolve()):
            # Trainer is about to write checkpoint-N where one already is: the rest of an interrupted
            # save, or a checkpoint of steps trained again after resuming from an earlier one. Its
            # files must not outlive it into the new checkpoint's list (pakd_hf.checkpoints).
            import shutil

            shutil.rmtree(output_dir)
        if self._pruning_involved() and self._needs_custom_code():
            if self.args.should_save:
                from .export import save_compact

                save_compact(self.model, output_dir, extra_pakd=self._pakd_extra())
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
        else:
            super().save_model(output_dir, _internal_call)
            if self.args.should_save and self._pruning_involved():
                self._write_pakd_json(Path(output_dir))
        if self.recipe is not None and self.args.should_save:
            self.recipe.save(Path(output_dir))

    def _needs_custom_code(self) -> bool:
        if self._mask_state is not None and self._mask_state.structure() != self._mask_state.base:
            return False  # mid-stage masks: the model still has its full shapes
        from .export import needs_custom_code

        return needs_custom_code(self.model)

    def _write_pakd_json(self, folder: Path) -> None:
        from .arch import get_adapter
        from .prune import Structure, write_pakd_json

        adapter = get_adapter(self.model)
        structure = Structure.from_model(self.model, adapter)
        write_pakd_json(folder, structure, architecture=type(self.model).__name__, family=adapter.family,
                        extra=self._pakd_extra())

    def _pakd_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"recipe": self.recipe.name if self.recipe is not None else None}
        teacher = self.teacher_model
        if teacher is not None:
            extra["teacher"] = {
                "name_or_path": getattr(getattr(teacher, "config", None), "_name_or_path", None) or None,
                "architecture": type(teacher).__name__,
                "parameters": sum(p.numel() for p in teacher.parameters()),
            }
        if self._mask_state is not None and self._mask_state.weight_masks:
            extra["sparsity"] = self._mask_state.sparsity()
        if self._vocab_record is not None:
            extra["vocabulary"] = self._vocab_record
        if self._rotation_record is not None:
            extra["hidden_rotation"] = self._rotation_record
        return extra

    def _save_pakd_state(self, checkpoint: str) -> None:
        state = {
            "format": 1,
            "global_step": self.state.global_step,
            "stage_index": self._stage_idx,
            "stage_name": self.current_stage.name if self.current_stage is not None else None,
            "recipe_fingerprint": self.recipe.fingerprint() if self.recipe is not None else None,
        }
        if self._pruning_involved():
            from .prune import Structure

            state["structure"] = Structure.from_model(self.model).to_dict()
        if self._mask_state is not None:
            masks = self._mask_state.state_dict()
            weight_masks = masks.pop("weight_masks")
            state["mask_state"] = masks
            if weight_masks:
                from safetensors.torch import save_file

                save_file({k: v.cpu().contiguous() for k, v in weight_masks.items()}, os.path.join(checkpoint, MASKS_FILENAME))
        if self._pruner is not None:
            state["stage_initial"] = self._pruner.initial.to_dict()
            accumulator = self._pruner.accumulator
            if accumulator is not None and accumulator.criterion != "magnitude" and accumulator.num_updates:
                from safetensors.torch import save_file

                save_file(accumulator.state_dict(), os.path.join(checkpoint, IMPORTANCE_FILENAME))
        if self._rotation_record is not None:
            state["hidden_rotation"] = self._rotation_record
        Path(checkpoint, STATE_FILENAME).write_text(json.dumps(state, indent=2) + "\n")
        if self.distill_projections is not None:
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in self.distill_projections.state_dict().items()}
            save_file(tensors, os.path.join(checkpoint, PROJECTIONS_FILENAME))

    def _complete_checkpoint(self, checkpoint: str) -> None:
        """After Trainer's files: PaKD's state, then the marker that makes the checkpoint count,
        then the rotation of older ones (held back from Trainer until now, see :meth:`train`)."""
        from .checkpoints import mark_complete, rotate

        self._save_pakd_state(checkpoint)
        mark_complete(checkpoint, self.state.global_step)
        rotate(checkpoint, self._save_total_limit, keep=self.state.best_model_checkpoint)

    def _restore_pakd_state(self, checkpoint: str) -> None:
        state_file = Path(checkpoint, STATE_FILENAME)
        saved = json.loads(state_file.read_text()) if state_file.is_file() else {}
        if self.recipe is not None and saved.get("recipe_fingerprint") not in (None, self.recipe.fingerprint()):
            raise ValueError(
                f"checkpoint {checkpoint} was made with a different recipe than '{self.recipe.name}': "
                f"resume with the recipe saved beside it ({Path(checkpoint, 'pakd_recipe.yaml')})"
            )
        if saved.get("structure"):
            # The checkpoint holds a compacted model: give the model the same shapes before
            # Trainer loads its weights.
            from .prune import Structure, compact

            target = Structure.from_dict(saved["structure"])
            if target != Structure.from_model(self.model):
                self._after_compaction(compact(self.model, target, check_export=False))
        if saved.get("hidden_rotation"):
            self._rotation_record = saved["hidden_rotation"]
        masks_file = Path(checkpoint, MASKS_FILENAME)
        importance_file = Path(checkpoint, IMPORTANCE_FILENAME)
        self._resume_pruning = {
            "importance_file": str(importance_file) if importance_file.is_file() else None,
            "mask_state": saved.get("mask_state"),
            "masks_file": str(masks_file) if masks_file.is_file() else None,
            "stage_initial": saved.get("stage_initial"),
            "stage_index": saved.get("stage_index"),
        }
        proj_file = Path(checkpoint, PROJECTIONS_FILENAME)
        if self.distill_projections is not None and proj_file.is_file():
            from safetensors.torch import load_file

            self.distill_projections.load_state_dict(load_file(str(proj_file), device=str(self.args.device)))

    # ---- the Hub ---------------------------------------------------------------------
    def push_to_hub(
        self,
        commit_message: str | None = "Upload compressed model (pakd-hf)",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        *,
        report: dict | None = None,
        **card_kwargs: Any,
    ) -> str | None:
        """Save the compact student, write its model card and push it to `args.hub_model_id`.

        Only the student's files go up (see `pakd_hf.hub.PUSH_PATTERNS`): never the teacher,
        optimizer or trainer state, checkpoints, distillation projections or
        `training_args.bin`. `report` is a measured comparison (`pakd_hf.benchmark.compare_models`)
        for the card's numbers; `card_kwargs` go to `pakd_hf.hub.write_card` (license, dataset,
        reproduce). Errors raise `pakd_hf.hub.PushError`. Always blocking.
        """
        from .hub import push_folder, write_card

        output_dir = self.args.output_dir
        self.save_model(output_dir, _internal_call=True)
        if not self.is_world_process_zero():
            return None
        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id or Path(output_dir).name
        if self.teacher_model is not None and "teacher" not in card_kwargs:
            name = getattr(getattr(self.teacher_model, "config", None), "_name_or_path", "") or None
            card_kwargs["teacher"] = name
        write_card(output_dir, report or {}, repo_id=repo_id, **card_kwargs)
        return push_folder(
            output_dir,
            repo_id,
            private=self.args.hub_private_repo,
            revision=revision or self.args.hub_revision,
            token=token or self.args.hub_token,
            commit_message=commit_message or "Upload compressed model (pakd-hf)",
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Trainer pushes every checkpoint's output_dir (with training_args.bin, which can hold a
        # token, and a model that may still be masked). A PaKD run pushes only the final,
        # compact student, through push_to_hub().
        if not getattr(self, "_warned_checkpoint_push", False):
            logger.warning("PaKDTrainer pushes only the final student (push_to_hub); checkpoint pushes are skipped")
            self._warned_checkpoint_push = True

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None):
        """Trainer's ``train``. ``resume_from_checkpoint``: a complete checkpoint only (see
        :mod:`pakd_hf.checkpoints`); ``True`` takes the newest complete one under ``output_dir``.
        An incomplete one raises :class:`~pakd_hf.checkpoints.IncompleteCheckpointError` (one
        line) before anything is loaded."""
        from .checkpoints import resolve

        resume_from_checkpoint, skipped = resolve(resume_from_checkpoint, self.args.output_dir)
        if self._pruning_involved():
            from .prune import Structure

            try:  # what the compression metrics compare with: the model as given, before a resume compacts it
                self._start_structure = Structure.from_model(self.model)
            except ValueError:
                self._start_structure = None
            if self._start_structure is not None:
                # The example the MACs are counted on, taken now, before the training loop: a loader
                # made inside the loop joins accelerate's state and changed a resumed run's result.
                with torch.random.fork_rng(devices=[]):
                    try:
                        self._cost_inputs = self._sample_inputs()
                    except Exception:  # noqa: BLE001 - no training data to sample: counts only
                        self._start_structure = None
        for note in skipped:
            logger.warning("skipping an incomplete checkpoint: %s", note)
        if resume_from_checkpoint is not None:
            self._restore_pakd_state(resume_from_checkpoint)
        self._stage_idx = 0
        # Trainer rotates old checkpoints as soon as it has written its own files, before PaKD's
        # state and the completion marker (on_save): a kill in between would leave no complete
        # checkpoint. So Trainer sees no limit, and _complete_checkpoint rotates with the user's.
        self._save_total_limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            return super().train(
                resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
            )
        finally:
            self.args.save_total_limit = self._save_total_limit


def _batch_size(batch: Any) -> int:
    # Mapping, not dict: tokenizer collators return a BatchEncoding (a UserDict)
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
    return 0


def _sequence_mask(inputs: dict, reference: torch.Tensor) -> torch.Tensor | None:
    """The attention mask when it lines up with `reference`'s positions ([B, S, ...]), else None."""
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and reference.dim() >= 2 and mask.shape[1] == reference.shape[1]:
        return mask.bool()
    return None


def _is_causal_lm(model) -> bool:
    """Whether ``model`` is one of transformers' causal-LM classes (``*ForCausalLM``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _position_mask(inputs: dict, logits: torch.Tensor) -> torch.Tensor | None:
    """For token-level logits: positions with a label (labels != -100), else the attention mask."""
    if logits.dim() < 3:
        return None
    labels = inputs.get("labels")
    if isinstance(labels, torch.Tensor) and labels.shape == logits.shape[:2]:
        return labels.ne(-100)
    return _sequence_mask(inputs, logits)
