"""PaKDTrainer: a `transformers.Trainer` that distils a frozen teacher into the student,
stage by stage, as a recipe says.

It works only through Trainer's own hooks: `set_initial_training_values` (the total number of
steps is the sum of the stages), `create_optimizer` / `create_scheduler` (a fresh optimizer and
LR schedule per stage, with the stage's overrides), `get_batch_samples` (the size of the
gradient-accumulation window), `compute_loss` (distillation), `log` (loss components) and a
callback (stage switches, checkpoint extras). The training loop itself is Trainer's.

With no teacher, no recipe and no `train_sample_weights` it is exactly `Trainer`.

A training set may carry the teacher's logits in a `teacher_logits` column (see
`add_teacher_logits`): a stage that distils logits only then reads them instead of running
the teacher, which is most of a small student's step time. Stages that distil hidden states
or attention, or blend examples (``mixup``), still run the teacher.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import transformers
from accelerate.utils import DistributedType
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.optimization import get_scheduler
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length
from transformers.utils import is_sagemaker_mp_enabled

from .arch import get_adapter
from .arch.structure import Structure
from .carried import embedding_rows, structure_record, vocabulary_record
from .checkpoints import (IncompleteCheckpointError, is_checkpoint_folder, mark_complete, read_projections, read_state, resolve,
                          rotate, write_state)
from .distill import TEACHER_LOGITS, HiddenProjections, add_teacher_logits, distillation_loss
from .export import needs_custom_code, save_compact
from .hub import push_folder, write_card
from .prune.controller import dry_run
from .prune.session import PruningSession
from .prune.structure import write_pakd_json
from .prune.vocab import prune_vocabulary_by_counts
from .recipe import Recipe, RecipeError, Stage, check_layer_maps, load_recipe
from .sampling import EpochWeightedSampler, check_sample_weights

__all__ = ["PaKDTrainer", "add_teacher_logits", "TEACHER_LOGITS"]

logger = logging.getLogger(__name__)

COMPONENTS = ("task", "kd_logits", "kd_hidden", "kd_attn")


# Trainer methods that PaKDTrainer overrides although transformers does not document them as
# hooks. A transformers release that renames one would leave our override dead and the run
# silently wrong (teacher logits dropped by the column filter, checkpoints pushed masked), so
# PaKDTrainer refuses to start when one is missing (`check_trainer_private_methods`), and a test
# keeps this list complete.
TRAINER_PRIVATE_OVERRIDES = {
    "_set_signature_columns_if_needed": "keeps the teacher_logits column through Trainer's column filter",
    "_push_from_checkpoint": "stops Trainer from pushing masked checkpoints (and training_args.bin)",
    "_clip_grad_norm": "max_grad_norm bounds the student's and the hidden-distillation projections' gradients together",
    "_get_grad_norm": "with max_grad_norm 0 the logged grad_norm still covers the projections, as when it clips",
    "_get_train_sampler": "draws the training examples by train_sample_weights",
}


# Trainer's private state and parameters PaKDTrainer reads or sets (same reason, same refusal).
TRAINER_PRIVATE_ATTRIBUTES = {
    "_signature_columns": "the column list the teacher_logits column is added to",
    "_created_lr_scheduler": "set when a stage builds its own schedule, so Trainer does not replace it",
}
TRAINER_PRIVATE_PARAMETERS = {
    ("save_model", "_internal_call"): "tells a checkpoint save from the user's, to clear a stale checkpoint folder",
}


def _refuse(what: str, why: str) -> None:

    raise RuntimeError(f"transformers {transformers.__version__} has no {what} (PaKDTrainer relies on it: {why}); "
                       "install a transformers release pakd-hf supports")


def check_trainer_private_methods() -> None:
    """Raise a RuntimeError naming the method (or parameter) when this transformers lacks one
    PaKDTrainer overrides or passes."""

    for name, why in TRAINER_PRIVATE_OVERRIDES.items():
        if not callable(getattr(Trainer, name, None)):
            _refuse(f"Trainer.{name}", why)
    for (method, parameter), why in TRAINER_PRIVATE_PARAMETERS.items():
        if parameter not in inspect.signature(getattr(Trainer, method)).parameters:
            _refuse(f"parameter {parameter} of Trainer.{method}", why)


def check_trainer_private_state(trainer: Trainer) -> None:
    """After Trainer.__init__: the private attributes PaKDTrainer reads or sets exist."""
    for name, why in TRAINER_PRIVATE_ATTRIBUTES.items():
        if not hasattr(trainer, name):
            _refuse(f"Trainer attribute {name}", why)


def wait_for_everyone(accelerator) -> None:
    """Every process gets here before any goes on. accelerate's ``wait_for_everyone`` passes
    ``device_ids=[local rank]`` to the barrier also for gloo, and torch then puts the barrier's
    tensor on the machine's accelerator: CPU processes (``--use_cpu``) on a machine with fewer GPUs
    than processes failed there ("CUDA error: invalid device ordinal", rank 1 of 2 on one H200).
    A barrier without device ids runs on the CPU for gloo (what Trainer's own barriers do)."""
    if dist.is_available() and dist.is_initialized() and (dist.get_backend() == "gloo"
                                                           or accelerator.device.type == "cpu"):
        dist.barrier()
    else:
        accelerator.wait_for_everyone()


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


def prune_student_vocabulary(student: nn.Module, tokenizer, dataset, recipe):
    """The recipe's `vocabulary` pruning, done before training (`vocabulary.at: start`).

    Counts the tokens of `dataset["input_ids"]` (the real training set, tokenized with
    `tokenizer`), slices the student's embedding rows in place and returns the student's new
    tokenizer: tokenize the training and evaluation data with it. A `PaKDTrainer` given this
    student maps its inputs back to the teacher's ids (same tokens, same positions) and records
    the pruning in `pakd.json`.
    """

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


def _sample_weights(weights, train_dataset, args) -> torch.Tensor | None:
    """``train_sample_weights`` checked against the training set and the sampling TrainingArguments
    asks for (one clear ValueError each), as a tensor; None when not given."""
    if weights is None:
        return None
    if train_dataset is None:
        raise ValueError("train_sample_weights: no train_dataset to weigh: pass train_dataset as well")
    strategy = getattr(args, "train_sampling_strategy", "random")
    if strategy != "random":
        raise ValueError(f"train_sample_weights: draws the examples itself, but train_sampling_strategy is "
                         f"'{strategy}': leave it at 'random' or drop the weights")
    return check_sample_weights(weights, len(train_dataset) if has_length(train_dataset) else None)


def check_inputs(recipe: Recipe | None, model, teacher, kwargs: dict) -> None:
    """What PaKDTrainer checks before Trainer's own __init__ touches output_dir or the models:
    the teacher against the student (labels, vocabulary), the recipe against both (stages the
    engine can prune, layer maps, hidden widths), and Trainer arguments a recipe cannot use.
    One clear error each."""
    if teacher is not None:
        if teacher is model:
            raise ValueError("teacher_model is the student itself: pass a separate (frozen) teacher model")
        if model is not None:
            check_label_spaces(model, teacher)
    if recipe is None:
        return
    pruned = vocabulary_record(model)
    if pruned is not None and teacher is not None and embedding_rows(teacher) not in (embedding_rows(model), pruned.vocab_size_original):
        raise ValueError(
            f"the student's vocabulary was pruned from {pruned.vocab_size_original:,} tokens, but the teacher has "
            f"{embedding_rows(teacher):,}: pass the teacher the student was pruned from"
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
        dry_run(model, recipe.stages)  # unsupported architecture, impossible targets, head_dim
    mixing = next((i for i, s in enumerate(recipe.stages) if s.distillation is not None and s.distillation.mixup), None)
    if mixing is not None:
        config = getattr(model, "config", None)
        kind = getattr(config, "problem_type", None)
        if kind in ("regression", "multi_label_classification") or getattr(config, "num_labels", 2) < 2:
            raise RecipeError(f"stages[{mixing}].distillation.mixup",
                              f"weighs two class labels per blended example, but the model's problem is "
                              f"{kind or 'regression (num_labels 1)'}: remove it")
        if kwargs.get("compute_loss_func") is not None:
            raise RecipeError(f"stages[{mixing}].distillation.mixup",
                              "weighs the two labels of each blended example itself, which compute_loss_func would "
                              "not see: remove one of them")
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


class _EpochDraws(TrainerCallback):
    """Gives the weighted sampler (`train_sample_weights`) the epoch about to be drawn. Trainer's
    own `set_epoch` goes through accelerate's dataloader, which does not reach the sampler in a
    DDP run resumed mid-epoch (three wrappers deep: the batches it skips, the process's shard, the
    batch sampler), and that epoch would then draw epoch 0's sequence. `state.epoch` is the
    epochs done so far (a resumed run restores it from its checkpoint)."""

    def __init__(self, trainer: "PaKDTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sampler = self.trainer._weighted_sampler
        if sampler is not None:
            sampler.set_epoch(math.floor(state.epoch + 1e-6))


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
        self.trainer._before_optimizer_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._after_optimizer_step(state.global_step)
        ends_stage = self.trainer._stage_ends_at(state.global_step)
        self.trainer._maybe_advance_stage(state.global_step)
        if ends_stage and getattr(args, "eval_on_stage_end", False) and self.trainer.eval_dataset is not None:
            control.should_evaluate = True  # Trainer evaluates right after this step (compacted by now)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._finish_pruning()
        self.trainer._prune_vocabulary()
        self.trainer._restore_attention()

    def on_save(self, args, state, control, **kwargs):
        # Every rank has written its files (its RNG state) before process 0 marks the checkpoint complete.
        wait_for_everyone(self.trainer.accelerator)
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
        train_sample_weights: one weight per example of `train_dataset`: every epoch draws
            `len(train_dataset)` examples with replacement, each in proportion to its weight
            (`pakd_hf.sampling.balanced_weights(train_dataset["engine"])` draws every engine
            equally often). The draw of an epoch depends on the seed (`data_seed`, else `seed`)
            and the epoch alone, so a resumed run and every DDP process draw the same. Default:
            Trainer's uniform shuffle.
        **kwargs: every other `Trainer` argument, unchanged.

    The class holds Trainer overrides only (about 600 lines, each of them a hook that has to
    live on the subclass): the stage machine (`set_initial_training_values`,
    `create_optimizer`, `create_scheduler` and a callback), the loss (`compute_loss`, the terms
    in :func:`pakd_hf.distill.distillation_loss`), logging, saving, checkpoint state and the
    push. Pruning is :attr:`pruning`, a :class:`pakd_hf.prune.session.PruningSession`.
    """

    _tag_names = ["pakd", "knowledge-distillation"]

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher_model: nn.Module | None = None,
        args=None,
        recipe: "str | os.PathLike | dict | Recipe | None" = None,
        vocabulary_dataset: Any = None,
        train_sample_weights: Any = None,
        **kwargs: Any,
    ):
        check_trainer_private_methods()
        if recipe is None and args is not None:
            recipe = getattr(args, "recipe", None)
        # Everything that can be wrong with the inputs is checked here, before Trainer.__init__
        # touches output_dir or the models.
        self.recipe: Recipe | None = load_recipe(recipe) if recipe is not None else None
        check_inputs(self.recipe, model, teacher_model, {**kwargs, "vocabulary_dataset": vocabulary_dataset})
        self.train_sample_weights = _sample_weights(train_sample_weights, kwargs.get("train_dataset"), args)
        self.teacher_model = teacher_model
        self.vocabulary_dataset = vocabulary_dataset
        self._spans: list[StageSpan] | None = None
        self._stage_idx = 0
        self._window_samples: int | None = None
        self._save_total_limit: int | None = None  # the user's, applied after each checkpoint is complete

        super().__init__(model=model, args=args, **kwargs)
        check_trainer_private_state(self)

        if teacher_model is not None:
            teacher_model.eval()
            teacher_model.requires_grad_(False)
            # Moved, never wrapped: the teacher takes no gradients, so DDP has nothing to sync.
            teacher_model.to(self.args.device)

        self._attn_restore: dict[int, tuple[nn.Module, str]] = {}

        if model is None and self.model is not None:
            # model_init: Trainer built the student just now; check it as a given model is checked
            check_inputs(self.recipe, self.model, teacher_model, {**kwargs, "vocabulary_dataset": vocabulary_dataset})
        self.distill_projections: HiddenProjections | None = self._build_projections(self.model, teacher_model)
        #: The run's pruning (masks, stage pruners, rotation, vocabulary, their checkpoint state):
        #: see :class:`pakd_hf.prune.session.PruningSession`.
        self.pruning = PruningSession(
            lambda: self.model, teacher=teacher_model, projections=self.distill_projections, reduce=self._reduce_sum,
            broadcast=self._broadcast, batches=self._input_batches, on_compacted=self._after_compaction,
        )
        self._component_sums = torch.zeros(len(COMPONENTS), dtype=torch.float64)
        self._component_counts = torch.zeros(len(COMPONENTS), dtype=torch.float64)
        self._signal_checked: set[int] = set()  # stages whose first distilled batch was checked
        self._mix_draw = (-1, 0)  # (optimizer step, micro-batch within it) of the last mixup blend
        if self.recipe is not None or teacher_model is not None:
            self.add_callback(_PaKDCallback(self))
        self._weighted_sampler: EpochWeightedSampler | None = None  # the one the training dataloader reads
        if self.train_sample_weights is not None:
            self.add_callback(_EpochDraws(self))

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
        record = structure_record(model)
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

        if not has_length(dataloader):
            self._spans = self._plan(None)
            total = self._spans[-1].end
            batch = self.get_total_train_batch_size(args)

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

    def evaluate(self, *args, **kwargs):
        """Trainer's evaluate, with training's CPU random state kept: a new data loader iterator
        draws a seed from it, and an evaluation between stages (``eval_on_stage_end``) or at
        ``eval_steps`` must not change the dropout of the steps after it."""
        with torch.random.fork_rng(devices=[]):
            return super().evaluate(*args, **kwargs)

    def _stage_ends_at(self, global_step: int) -> bool:
        return self._spans is not None and any(span.end == global_step for span in self._spans)

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

    # ---- pruning (the engine's side lives in self.pruning) ------------------------------
    def _begin_stage_pruning(self) -> bool:
        """Start the current stage's pruning; True when the parameters were replaced (a hidden
        rotation), so the caller rebuilds the optimizer."""
        span = self._spans[self._stage_idx] if self._spans is not None else None
        return self.pruning.begin_stage(
            span.stage if span is not None else None, self._stage_idx, span.start if span else 0, span.end if span else 0,
            sample_inputs=self._sample_inputs,
        )

    def _input_batches(self):
        """Training batches without labels or cached teacher logits (rotation's calibration)."""
        skip = set(self.label_names or []) | {TEACHER_LOGITS, "labels"}
        for batch in self.get_train_dataloader():
            yield {k: v for k, v in batch.items() if torch.is_tensor(v) and k not in skip}

    def _sample_inputs(self) -> dict:
        """One training sample (no labels), for counting MACs of a budget: process 0's on every
        process (each draws its own shard, and a padded length changes the MACs, so the budget's
        counts, and with them the pruned shapes, could differ between processes)."""
        batch = next(iter(self.get_train_dataloader()))
        skip = set(self.label_names or []) | {TEACHER_LOGITS}
        sample = {k: v[:1].cpu() for k, v in batch.items() if torch.is_tensor(v) and k not in skip}
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [sample]
            broadcast_object_list(box, from_process=0)
            sample = box[0]
        return sample

    def _resolve_checkpoint(self, resume) -> tuple[str | None, list[str]]:
        """:func:`~pakd_hf.checkpoints.resolve` on process 0, its answer (or its error) on every
        process: they must resume the same step, also where the ranks do not see one shared
        folder (process 0 alone writes the completion marker)."""
        if self.accelerator.num_processes <= 1:
            return resolve(resume, self.args.output_dir)
        from accelerate.utils import broadcast_object_list

        box = [None]
        if self.accelerator.is_main_process:
            try:
                box = [("ok", resolve(resume, self.args.output_dir))]
            except IncompleteCheckpointError as exc:
                box = [("error", str(exc))]
        broadcast_object_list(box, from_process=0)
        kind, value = box[0]
        if kind == "error":
            raise IncompleteCheckpointError(value)
        return value

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes <= 1:
            return tensor
        return self.accelerator.reduce(tensor.to(self.args.device), reduction="sum").to(tensor.device)

    def _broadcast(self, modules: list[nn.Module]) -> None:
        """Every process takes process 0's tensors of ``modules`` (after a rotation)."""
        if self.accelerator.num_processes <= 1:
            return

        for module in modules:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def _before_optimizer_step(self, global_step: int) -> None:
        self.pruning.before_optimizer_step(global_step)

    def _after_optimizer_step(self, global_step: int) -> None:
        if self.distill_projections is not None:
            # Trainer clears the model's gradients only (model.zero_grad()): the projections live
            # beside the model, and without this their gradients would add up over the whole run.
            self.distill_projections.zero_grad(set_to_none=True)
        self.pruning.after_optimizer_step(global_step)

    def _finish_pruning(self, global_step: int | None = None) -> bool:
        """End the current stage's pruning (``global_step``) or, with no step, the training's:
        then structural masks are compacted in any case. True when the model was compacted."""
        step = self.state.global_step if global_step is None else global_step
        return self.pruning.finish_stage(step, end_of_training=global_step is None)

    def _prune_vocabulary(self) -> None:
        """End of training: keep only the tokens the training set uses (recipe `vocabulary`;
        counted on `vocabulary_dataset` when given). The tokenizer becomes the rewritten one;
        data tokenized with the original tokenizer is remapped in `prediction_step`, so
        `evaluate()` / `predict()` keep working on it.
        """
        spec = self.recipe.vocabulary if self.recipe is not None else None
        if spec is None or self.pruning.vocab_record is not None:
            return
        source = self.vocabulary_dataset if self.vocabulary_dataset is not None else self.train_dataset
        self.processing_class = self.pruning.prune_vocabulary(spec, self.processing_class, source["input_ids"])
        record = self.pruning.vocab_record
        self._write_to_bar(f"[pakd] vocabulary: kept {record['vocab_size']:,} of {record['vocab_size_original']:,} tokens")

    def _write_to_bar(self, message: str, description: str | None = None) -> None:
        """Log ``message``, and print it above Trainer's progress bar (process 0)."""
        logger.info(message)
        if not self.is_world_process_zero():
            return
        for cb in self.callback_handler.callbacks:
            bar = getattr(cb, "training_bar", None) if isinstance(cb, ProgressCallback) else None
            if bar is not None:
                if description is not None:
                    bar.set_description(description)
                bar.write(message)

    def _get_train_sampler(self, train_dataset=None):
        weights = self.train_sample_weights
        if weights is None:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if len(dataset) != len(weights):  # the training set was replaced after __init__
            raise ValueError(f"train_sample_weights: {len(weights):,} weights for {len(dataset):,} training examples: "
                             "the training set changed after PaKDTrainer was made: give it weights of its own")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self._weighted_sampler = EpochWeightedSampler(weights, seed=seed)
        return self._weighted_sampler

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if TEACHER_LOGITS not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, TEACHER_LOGITS]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if k != TEACHER_LOGITS}
        id_map = self.pruning.vocab_id_map
        if id_map is not None and torch.is_tensor(inputs.get("input_ids")):
            ids = inputs["input_ids"]
            inputs = {**inputs, "input_ids": id_map.to(ids.device)[ids]}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _after_compaction(self, result, message: str | None = None) -> None:
        """Parameters were replaced: fix what holds them (projections, DDP wrapper)."""
        structure = result.structure
        if self.distill_projections is not None:
            self.distill_projections.keep_inputs(structure.hidden)
        if self.model_wrapped is not self.model and self.accelerator.num_processes > 1:
            # DDP registered gradient hooks on the old parameters: wrap the compacted model anew.
            # Under fp16/bf16, preparing wraps the model's forward in autocast again: give it
            # back its own forward first, or every compaction adds a layer.
            original = self.model.__dict__.pop("_original_forward", None)
            if original is not None:
                self.model.forward = original
            self.model_wrapped = self.accelerator.prepare_model(self.model)
            # accelerate lists the model it prepares in `_models` (what its save_state and
            # free_memory walk) each time: keep one entry per model.
            models = getattr(self.accelerator, "_models", None)
            if isinstance(models, list):
                models[:] = [m for i, m in enumerate(models) if not any(m is n for n in models[:i])]
        counts = structure.counts()
        self._write_to_bar(message or f"[pakd] compacted: {result.params_before:,} -> {result.params_after:,} parameters ({counts})")

    def training_step(self, model, inputs, num_items_in_batch=None):
        sync = contextlib.nullcontext()
        if model is not self.model_wrapped and self.model_wrapped is not self.model:
            # After a compaction under DDP, Trainer's loop still holds the old wrapper, and the
            # `no_sync` it entered for a micro-batch before the last of an accumulation window
            # is the old wrapper's: enter the new one's, or every micro-batch all-reduces.
            model = self.model_wrapped
            if not self.accelerator.sync_gradients and self._loop_defers_sync():
                sync = self.accelerator.no_sync(model)
        with sync:
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            # the last micro-batch before an optimizer step, where DDP averaged the student's
            # gradients: the projections' too, before anything reads them (norm, clipping,
            # fp16's overflow check)
            self._sync_projection_grads()
        return loss

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
        self._write_to_bar(f"[pakd] stage {span.index + 1}/{len(self._spans)} '{stage.name}' ({what}): "
                           f"steps {span.start}-{span.end}, lr {lr:g}", description=f"stage {stage.name}")

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
        """The stage's distillation loss (:func:`pakd_hf.distill.distillation_loss`): each term
        summed over the micro-batch's samples and divided by the number of samples in the whole
        accumulation window, so accumulating micro-batches gives the gradient of one big batch
        (and `loss_is_scaled_for_ga` is True)."""
        total, outputs, sums, n = distillation_loss(
            model, self.teacher_model, inputs, self.current_stage.distillation,
            label_names=self.label_names or [], cached_logits=cached_logits,
            teacher_token_ids=self.pruning.teacher_token_ids, label_smoother=self.label_smoother,
            compute_loss_func=self.compute_loss_func, project=self.distill_projections,
            unwrapped=self.accelerator.unwrap_model(model), checked_heads=self.__dict__.setdefault("_plain_heads", set()),
            mix_seed=self._mix_seed(),
        )
        for i, name in enumerate(COMPONENTS):
            if name in sums:
                self._component_sums[i] += float(sums[name].detach())
                self._component_counts[i] += n
        self._check_gradient_signal(total, n)
        return total / (self._window_samples or n), outputs

    def _mix_seed(self) -> int | None:
        """The seed of this micro-batch's mixup blend, from the run's seed, the optimizer step,
        the micro-batch within it and the process: a resumed run blends as the uninterrupted one
        did, processes blend differently, and torch's global random state (augmentation,
        dropout) is not drawn from (:func:`pakd_hf.distill.mix_batch`)."""
        if not self.current_stage.distillation.mixup:
            return None
        step = self.state.global_step
        self._mix_draw = (step, self._mix_draw[1] + 1 if self._mix_draw[0] == step else 0)
        key = f"{self.args.seed}:{step}:{self._mix_draw[1]}:{self.args.process_index}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")

    def _check_gradient_signal(self, total: torch.Tensor, n: int) -> None:
        """Say it when a stage that ranks by gradients (``taylor``, ``movement``) starts from a
        zero loss: a student that still computes exactly what its teacher does (no dropout, no
        label term) has round-off gradients, so its scores rank noise (docs/pruning.md). Checked
        once per stage, on its first distilled micro-batch, on the main process."""
        if self._stage_idx in self._signal_checked:
            return
        self._signal_checked.add(self._stage_idx)
        pruning = self.current_stage.pruning
        if pruning is None or pruning.importance not in ("taylor", "movement") or not self.is_world_process_zero():
            return
        per_sample = float(total.detach()) / max(n, 1)
        if per_sample < 1e-6:
            stage = self.current_stage
            logger.warning(
                "stage '%s': the loss of its first batch is %.1e per sample (the student still computes what "
                "its teacher does), so importance '%s' ranks round-off gradients; give that stage a label term "
                "(distillation.alpha < 1 with labels) or dropout, or cut it with importance: magnitude, "
                "schedule: one-shot (docs/pruning.md)", stage.name, per_sample, pruning.importance)

    def _clip_grad_norm(self, model):
        """Trainer clips the model's gradients alone; the hidden-distillation projections are
        trained by the same optimizer beside the model, so ``max_grad_norm`` bounds the norm of
        both as one vector (what it would do if they were part of the model), and the logged
        ``grad_norm`` is that norm. Sharded engines (FSDP, DeepSpeed, XLA) clip their model
        themselves (FSDP; DeepSpeed steps inside backward, so nothing here reaches it): there
        the projections are clipped on their own to the same bound. With ``max_grad_norm`` 0
        nothing is clipped and :meth:`_get_grad_norm` logs the same joint norm."""
        proj = self.distill_projections
        if proj is None or is_sagemaker_mp_enabled():
            return super()._clip_grad_norm(model)
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            norm = super()._clip_grad_norm(model)
            torch.nn.utils.clip_grad_norm_(list(proj.parameters()), self.args.max_grad_norm)
            return norm
        return self.accelerator.clip_grad_norm_([*model.parameters(), *proj.parameters()], self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        """Trainer's norm to log when it did not clip (``max_grad_norm`` 0): the student's and the
        projections' gradients as one vector, the norm :meth:`_clip_grad_norm` logs when it clips,
        so the curve means one thing whatever the bound. Sharded engines keep Trainer's (the
        student's)."""
        proj = self.distill_projections
        if (grad_norm is None and proj is not None and not is_sagemaker_mp_enabled()
                and self.accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED)):
            grad_norm = self.accelerator.clip_grad_norm_([*model.parameters(), *proj.parameters()], float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _loop_defers_sync(self) -> bool:
        """Whether Trainer's loop runs a micro-batch that is not the window's last under
        `accelerator.no_sync` (its rule: not with `sync_each_batch`, not under DeepSpeed; its
        branch for a model sharded at load time is FSDP, where the model is never re-wrapped)."""
        plugin = getattr(self.accelerator.gradient_state, "plugin_kwargs", {}) or {}
        return not plugin.get("sync_each_batch", False) and self.accelerator.distributed_type != DistributedType.DEEPSPEED

    def _sync_projection_grads(self) -> None:
        """Average the projections' gradients across processes (DDP only syncs the student)."""
        proj = self.distill_projections
        if proj is None or self.accelerator.num_processes <= 1:
            return

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
                logs.update(self.pruning.progress())
        super().log(logs, start_time)

    # ---- saving and resuming ----------------------------------------------------------
    def _pruning_involved(self) -> bool:
        return self.pruning.involved(self.recipe.stages if self.recipe is not None else None)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save plus `pakd_recipe.yaml` and, for pruned students, `pakd.json`.

        A student whose shapes a stock config cannot describe (per-layer shapes, or BERT's
        hidden != heads x head_dim) is saved with generated modeling code instead
        (`pakd_hf.export.save_compact`): `trust_remote_code=True`, or `import pakd_hf`, loads it.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if (_internal_call and is_checkpoint_folder(output_dir)
                and Path(output_dir).resolve().parent == Path(self.args.output_dir).resolve()):
            # Trainer is about to write checkpoint-N where one already is: the rest of an interrupted
            # save, or a checkpoint of steps trained again after resuming from an earlier one. Its
            # files must not outlive it into the new checkpoint's list (pakd_hf.checkpoints).
            if self.args.should_save and os.path.isdir(output_dir):
                shutil.rmtree(output_dir)
            # Every rank waits until it is cleared: the others write their RNG state into this folder
            # (Trainer._save_rng_state makes it), and the clearing must not delete a folder another
            # rank has just made (it did, under torchrun: "Parent directory ... does not exist").
            wait_for_everyone(self.accelerator)
        if self._pruning_involved() and self._needs_custom_code():
            if self.args.should_save:
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
        if self.pruning.has_structural_masks():
            return False  # mid-stage masks: the model still has its full shapes
        return needs_custom_code(self.model)

    def _write_pakd_json(self, folder: Path) -> None:
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
        extra.update(self.pruning.records())
        return extra

    def _save_pakd_state(self, checkpoint: str) -> None:
        state = {
            "format": 1,
            "global_step": self.state.global_step,
            "stage_index": self._stage_idx,
            "stage_name": self.current_stage.name if self.current_stage is not None else None,
            "recipe_fingerprint": self.recipe.fingerprint() if self.recipe is not None else None,
        }
        state.update(self.pruning.save(checkpoint, self._pruning_involved()))
        write_state(checkpoint, state, self.distill_projections)

    def _complete_checkpoint(self, checkpoint: str) -> None:
        """After Trainer's files: PaKD's state, then the marker that makes the checkpoint count,
        then the rotation of older ones (held back from Trainer until now, see :meth:`train`)."""

        self._save_pakd_state(checkpoint)
        mark_complete(checkpoint, self.state.global_step)
        rotate(checkpoint, self._save_total_limit, keep=self.state.best_model_checkpoint)

    def _restore_pakd_state(self, checkpoint: str) -> None:
        saved = read_state(checkpoint)
        if self.recipe is not None and saved.get("recipe_fingerprint") not in (None, self.recipe.fingerprint()):
            raise ValueError(
                f"checkpoint {checkpoint} was made with a different recipe than '{self.recipe.name}': "
                f"resume with the recipe saved beside it ({Path(checkpoint, 'pakd_recipe.yaml')})"
            )
        self.pruning.restore(saved, checkpoint)  # a compacted checkpoint: the model takes its shapes first
        read_projections(checkpoint, self.distill_projections)

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

        if self.recipe is None and self.teacher_model is None:
            # Nothing of PaKD's to save or restore: Trainer's checkpoints, limit and resume as they are.
            return super().train(
                resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
            )
        resume_from_checkpoint, skipped = self._resolve_checkpoint(resume_from_checkpoint)
        if self._pruning_involved():
            # what the compression metrics compare with: the model as given, before a resume compacts it
            self.pruning.mark_start(self._sample_inputs)
        for note in skipped:
            logger.warning("skipping an incomplete checkpoint: %s", note)
        if resume_from_checkpoint is not None:
            self._restore_pakd_state(resume_from_checkpoint)
        self._stage_idx = 0
        self._signal_checked.clear()  # a second train() checks its stages' first batches again
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
