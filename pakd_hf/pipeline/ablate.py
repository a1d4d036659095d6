"""`pakd ablate`: does multi-stage pruning + distillation beat the simpler routes to the same
small model? Each arm trains a student of the SAME final shape (layers, heads, hidden, FFN,
vocabulary) as the recipe's, for the same number of optimizer steps, on the same examples
(the recipe's transfer set when it has one), from the same cached teacher:

- ``scratch``: random initialisation at the final shape, labels only;
- ``kd``: random initialisation at the final shape, the recipe's distillation losses (hidden
  losses through projections where the recipe uses them);
- ``prune-once-kd``: the teacher cut to the final shape in one shot at the start: the hidden
  stream rotated first if the recipe rotates, the other kinds cut after the first optimizer
  step on the recipe's importance from that first batch; then the recipe's distillation for
  all the steps;
- ``prune-only``: the recipe's pruning stages with no teacher (label loss only; a copy in the
  transfer set keeps the label of its source example), the recovery on labels;
- ``pakd``: the recipe itself.

Output (each arm x seed written as soon as it ends, and skipped when the command is run
again while it matches: its key (the arm's recipe and seed, ``--quick``, the teacher) and the
examples it trained on (the ``augment`` block and their count, ``examples_key``; a report from
before that field is matched by its count alone, so an ``augment`` change that keeps the count
goes unseen there); so an ablation can span several sittings, and a changed recipe or transfer
set retrains; a run cut off mid-way resumes
from its newest checkpoint, every ``--save_steps`` steps in ``OUT/<arm>/seed-<n>/.run/``)::

    OUT/teacher/               the teacher (as `pakd compress`; shared by every arm and seed)
    OUT/transfer/              the transfer set with the teacher's logits (shared)
    OUT/<arm>/seed-<n>/        student/ (stock from_pretrained loads it) and report.json
    OUT/ablation.json          every finished run under OUT that matches the recipe (not only this
                               invocation's): validation and test accuracy (perplexity for
                               text-generation: lower is better), params, bytes, shape
    OUT/ablation.md            the table: mean +- sd and the worst seed, per arm
    OUT/ablation.png           validation accuracy per arm with error bars, the teacher as a line

Choices are made on validation; each run reads the test split once, after its training.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shlex
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from .compress import (SAVE_STEPS, Prepared, fingerprint, prepare, resume_point, sample_weights, save_student, say,
                       student_arguments, student_start, teacher_identity, transfer_set)
from .preflight import preflight
from ..carried import set_vocabulary_record, vocabulary_record
from ..recipe import Recipe, RecipeError, check_layer_maps, load_recipe

__all__ = ["ARMS", "AblationError", "ablate", "arm_recipe", "summarise"]


class AblationError(RuntimeError):
    """The arms cannot be compared (e.g. their students differ in shape)."""

ARMS = ("scratch", "kd", "prune-once-kd", "prune-only", "pakd")
SHAPE_FIELDS = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size",
                "intermediate_size", "vocab_size",
                "encoder_layers", "encoder_attention_heads", "d_model", "encoder_ffn_dim", "hidden_sizes", "depths")


# ---- the arms as recipes ---------------------------------------------------------------
def _final_targets(recipe: Recipe):
    """Every structured target of the recipe's stages in one pruning block (the last stage
    that names a kind sets it), with the first pruning stage's importance."""
    pruning = [s.pruning for s in recipe.stages if s.pruning is not None]
    if not pruning:
        raise RecipeError("stages", "`pakd ablate` compares routes to a pruned student, but no stage prunes")
    for i, stage in enumerate(recipe.stages):
        spec = stage.pruning
        if spec is None:
            continue
        if spec.budget is not None or spec.unstructured is not None or spec.n_m is not None:
            raise RecipeError(f"stages[{i}].pruning", "`pakd ablate` needs explicit heads / ffn / layers / hidden targets "
                              "(a budget or sparsity has no one final shape to compare at)")
        if not spec.uniform:
            raise RecipeError(f"stages[{i}].pruning.uniform", "`pakd ablate` builds same-shape students from a stock "
                              "config: set uniform: true")
    targets: dict[str, Any] = {}
    for spec in pruning:
        targets.update(spec.structured_targets())
    return dataclasses.replace(pruning[0], schedule="one-shot", start_step=0, end_step=None, compact=True, **{
        kind: targets.get(kind) for kind in ("heads", "ffn", "layers", "hidden")
    })


def split_arm(spec: str) -> tuple[str, float]:
    """``"kd"`` -> ("kd", 1.0); ``"kd@5"`` -> ("kd", 5.0): the arm with every stage's learning
    rate times 5 (a baseline tuned on validation is a fair one: run a few scales, the table
    keeps each, and the claim compares the recipe with the best of them). The recipe itself
    (``pakd``) is not rescaled: its learning rates are the recipe's."""
    name, at, scale = spec.strip().partition("@")
    if name not in ARMS:
        raise RecipeError("--arms", f"unknown arm '{name}'; choose from {', '.join(ARMS)} (optionally @SCALE)")
    try:
        value = float(scale) if at else 1.0
    except ValueError:
        value = -1.0
    if not 0 < value < 1e4:  # also refuses nan
        raise RecipeError("--arms", f"'{spec}': the learning-rate scale after @ must be a positive number")
    if name == "pakd" and value != 1.0:
        raise RecipeError("--arms", f"'{spec}': the recipe keeps its own learning rates; scale the baselines only")
    return name, value


def arm_name(spec: str) -> str:
    """The canonical name of an arm spec (its folder): ``kd@5.0`` -> ``kd@5``, ``kd@1`` -> ``kd``."""
    name, scale = split_arm(spec)
    return name if scale == 1.0 else f"{name}@{scale:g}"


def arm_recipe(recipe: Recipe, arm: str, steps_per_epoch: int | None = None) -> Recipe:
    """The recipe an arm trains with: same stages, durations and learning rates (times the arm's
    ``@SCALE``); pruning and distillation kept or removed as the arm says. The transfer set is
    built once from the recipe's ``augment`` and passed in, so arm recipes have no ``augment`` block
    (nor an ``export`` one: a run key does not change when a recipe asks for ONNX files).

    ``prune-once-kd`` adds a one-step cut before the first stage and takes that step from it;
    a first stage measured in epochs needs ``steps_per_epoch`` to be shortened by exactly one
    step (without it the arm runs one step more than the others)."""
    spec, (arm, scale) = arm, split_arm(arm)
    raw = recipe.to_dict()
    raw.pop("augment", None)
    raw.pop("export", None)  # the arms compare training routes; exporting changes none of them
    raw["name"] = f"{recipe.name}-{spec.replace('@', '-lr')}"
    stages = raw["stages"]
    if scale != 1.0:
        from transformers import TrainingArguments

        default = TrainingArguments.__dataclass_fields__["learning_rate"].default  # what a stage without one uses
        for stage in stages:
            stage["learning_rate"] = stage.get("learning_rate", default) * scale
    if arm in ("scratch", "kd", "prune-once-kd"):
        for stage in stages:
            stage.pop("pruning", None)
    if arm in ("scratch", "prune-only"):
        for stage in stages:
            stage.pop("distillation", None)
    if arm == "prune-once-kd":
        first = recipe.stages[0]
        once = {"name": "prune-once", "steps": 1, "pruning": _plain(_final_targets(recipe))}
        if first.distillation is not None:
            once["distillation"] = _plain(first.distillation)
        if "learning_rate" in stages[0]:
            once["learning_rate"] = stages[0]["learning_rate"]
        if "epochs" in stages[0] and steps_per_epoch is not None:  # as PaKDTrainer counts a stage's steps
            stages[0]["steps"] = max(1, math.ceil(stages[0].pop("epochs") * steps_per_epoch))
        if stages[0].get("steps", 0) > 1:  # the cut takes one of the first stage's steps
            stages[0]["steps"] -= 1
        raw["stages"] = [once, *stages]
    return load_recipe(raw)


def _plain(obj) -> dict:
    from ..recipe import to_plain

    return to_plain(obj)


# ---- students ---------------------------------------------------------------------------
def _final_shape_config(p: Prepared, student):
    """The config of the recipe's final student: a copy cut to the final targets in one step
    (magnitude scores stand in: only the shape matters here, the weights are discarded)."""

    from ..prune.controller import StagePruner

    spec = _final_targets(p.recipe)
    if spec.hidden is not None:
        spec = dataclasses.replace(spec, hidden=dataclasses.replace(spec.hidden, method="select"))
    model = copy.deepcopy(student)
    pruner = StagePruner(model, dataclasses.replace(spec, importance="magnitude"), stage_start=0, stage_end=0)
    pruner.finish(0)
    pruner.mask_state.detach()
    return model.config


def _random_student(p: Prepared, start, seed: int):
    """A randomly initialised model of the final shape (stock config), with the start's pruned
    vocabulary (so it reads the same tokens as every other arm)."""
    from transformers import set_seed

    config = _final_shape_config(p, start)
    set_seed(seed)
    model = p.adapter.model_class().from_config(config)
    set_vocabulary_record(model, vocabulary_record(start))
    return model


def _shape(config: dict) -> dict[str, Any]:
    return {k: config[k] for k in SHAPE_FIELDS if k in config}


def _source_commit() -> str | None:
    """The commit of the code that ran (``-dirty`` with uncommitted changes), when it runs from a checkout."""
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty",
                              "--abbrev=40"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_arm(p: Prepared, arm: str, seed: int, transfer, folder: Path, test,
            save_steps: int | None = SAVE_STEPS) -> dict[str, Any]:
    """Train one arm at one seed into ``folder`` (student/ then report.json, written last);
    ``test`` (the test split) is evaluated once, after the training. With ``save_steps``, a
    checkpoint every that many steps in ``folder/.run`` (as `pakd compress` does): a run cut off
    mid-way resumes from its newest complete checkpoint when the command is run again, if its
    key (arm recipe, seed, teacher, data) and the examples it trains on (the recipe's ``augment``,
    their count) are the same; otherwise it starts over. ``train_seconds`` sums the sittings, up to
    the checkpoint a run resumed from (each checkpoint records the time so far)."""
    from transformers import set_seed

    from ..checkpoints import complete_checkpoints
    from ..measure import safetensors_bytes
    from ..trainer import TEACHER_LOGITS, PaKDTrainer

    set_seed(seed)
    start, student_pre, student_encoded = student_start(p)
    base, _ = split_arm(arm)
    student = _random_student(p, start, seed) if base in ("scratch", "kd") else start
    uses_teacher = base in ("kd", "prune-once-kd", "pakd")
    train = p.adapter.training_split(student_encoded["train"], p.recipe.data)
    if transfer is not None:
        train = transfer
        if not uses_teacher:  # labels only: a copy keeps its source example's label, and no teacher output
            labels = list(student_encoded["train"]["labels"])
            train = transfer.remove_columns([c for c in (TEACHER_LOGITS,) if c in transfer.column_names])
            train = train.add_column("labels", [labels[i % len(labels)] for i in range(len(train))])
    # One process, no gradient accumulation: Trainer's steps per epoch are the batches per epoch.
    steps_per_epoch = math.ceil(len(train) / p.recipe.training.batch_size)
    recipe = load_recipe({**arm_recipe(p.recipe, arm, steps_per_epoch).to_dict(), "seed": seed})
    key = run_key(p, arm, seed)
    run_dir = folder / ".run"
    # A checkpoint must also match the examples it was trained on: the run key leaves out the
    # recipe's augment block (finished runs of record keep their keys), so the checkpoints' key adds it.
    resume = resume_point(run_dir, fingerprint(key, *_examples(p, len(train))),
                          restart=False, what=f"{arm} seed {seed}", hint=f" (delete {run_dir} to start over)")
    before = _elapsed_at(complete_checkpoints(run_dir)[-1]) if resume else 0.0
    started = time.perf_counter()
    trainer = PaKDTrainer(
        model=student, teacher_model=p.teacher if uses_teacher else None,
        args=student_arguments(run_dir, recipe, save_steps=save_steps),
        train_dataset=train, eval_dataset=student_encoded["validation"], processing_class=student_pre, recipe=recipe,
        vocabulary_dataset=student_encoded["train"] if transfer is not None else None,
        data_collator=p.adapter.data_collator(student_pre, recipe.data),
        train_sample_weights=sample_weights(recipe, p.data),
        callbacks=[_record_elapsed(before or 0.0, started)],
    )
    trainer.train(resume_from_checkpoint=resume)
    seconds = round((before or 0.0) + time.perf_counter() - started, 1)
    save_student(trainer, folder / "student")
    shutil.rmtree(run_dir, ignore_errors=True)
    # Evaluate what a user loads: the saved folder, stock classes, its own preprocessor.
    model = p.adapter.model_class().from_pretrained(folder / "student")
    pre = p.adapter.load_preprocessor(folder / "student")
    validation = p.evaluate(model, pre, p.data["validation"])
    test = p.evaluate(model, pre, test)
    config = json.loads((folder / "student" / "config.json").read_text())
    metric = p.adapter.metric  # accuracy, or perplexity (text-generation: lower is better)
    report = {
        "arm": arm, "seed": seed, "metric": metric, f"{metric}_validation": round(validation, 5),
        f"{metric}_test": round(test, 5),
        "params": sum(t.numel() for t in model.parameters()), "bytes": safetensors_bytes(folder / "student"),
        "shape": _shape(config), "steps": trainer.state.global_step, "train_examples": len(train),
        "train_seconds": seconds, "key": key, "examples_key": fingerprint(*_examples(p, len(train))),
        "quick": p.quick, "commit": _source_commit(),
        "teacher_weights": p.teacher_info.get("weights"),
    }
    if resume:
        report["resumed"] = True
        if before is None:  # its checkpoint had no time: train_seconds counts the last sitting only
            report["train_seconds_last_sitting_only"] = True
    tmp = folder / ".report.json"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(folder / "report.json")
    say(f"{arm} seed {seed}: validation {validation:.4f}, test {test:.4f} ({seconds:.0f} s, {report['steps']} steps)")
    return report


ELAPSED_FILE = "pakd_ablate_time.json"


def _record_elapsed(before: float, started: float):
    """A callback that writes the training time so far into each checkpoint PaKDTrainer
    completes, so a resumed run's ``train_seconds`` adds the sittings before it."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class RecordElapsed(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                seconds = before + time.perf_counter() - started
                (folder / ELAPSED_FILE).write_text(json.dumps({"train_seconds": round(seconds, 1)}) + "\n")

    return RecordElapsed()


def _elapsed_at(checkpoint: Path) -> float | None:
    try:
        return float(json.loads((checkpoint / ELAPSED_FILE).read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_key(p: Prepared, arm: str, seed: int) -> str:
    """What a finished run must match to be reused: the arm's recipe at this seed (its steps
    counted as this data gives them), ``--quick`` and the teacher it learned from (its recipe
    key and its weights: the same recipe fine-tuned on another machine is another teacher)."""
    return fingerprint(arm_recipe(p.recipe, arm).to_dict(), seed, p.quick, teacher_identity(p.teacher_info),
                        len(p.data["train"]))


def _examples(p: Prepared, count: int) -> tuple[Any, int]:
    """What a run trained on beyond its run key: the recipe's ``augment`` block and the number of
    examples (the run key predates both; keeping it unchanged keeps the finished runs of record)."""
    return (_plain(p.recipe.augment) if p.recipe.augment else None), count


def train_count(p: Prepared, transfer, student_encoded) -> int:
    """How many examples every run trains on: the transfer set when the recipe has one (each arm
    trains on it), else the student's training split as the task's adapter makes it."""
    if transfer is not None:
        return len(transfer)
    return len(p.adapter.training_split(student_encoded["train"], p.recipe.data))


def reusable(report: dict[str, Any] | None, p: Prepared, arm: str, seed: int, count: int) -> bool:
    """Whether a finished run's report stands for this arm and seed now: the same run key, and
    the same examples (``examples_key``: the augment block and their count; a report written
    before it existed is checked by its ``train_examples`` alone, so an augment block changed
    without changing the count is not seen there)."""
    if report is None or report.get("key") != run_key(p, arm, seed):
        return False
    if "examples_key" in report:
        return report["examples_key"] == fingerprint(*_examples(p, count))
    return report.get("train_examples") == count


def _finished(folder: Path) -> dict[str, Any] | None:
    """A run's report when the run finished, else None. The report is written last, after the
    student, and is the run's record: removing ``student/`` afterwards (to save disk) or putting
    back a report kept under ``results/`` keeps the run in the table."""
    report = folder / "report.json"
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text())
    except ValueError:
        return None


# ---- the command ------------------------------------------------------------------------
def ablate(recipe_source, output_dir, *, seeds: int | list[int] = 3, arms: list[str] | None = None,
           quick: bool = False, save_steps: int | None = SAVE_STEPS) -> dict[str, Any]:
    """Run the arms (see the module docs); returns the summary written to ``OUT/ablation.json``:
    every finished run under OUT that matches (``reusable``), so a rerun for one more seed or one arm
    adds to the table rather than replacing it. Each run checkpoints every ``save_steps`` steps
    (0 or None: never), so a run cut off mid-way resumes rather than starting over."""
    arms = list(dict.fromkeys(arm_name(arm) for arm in (arms or ARMS)))
    seed_list = list(dict.fromkeys(range(seeds) if isinstance(seeds, int) else seeds))
    if not seed_list or any(s < 0 for s in seed_list):
        raise RecipeError("--seeds", f"needs at least one seed >= 0, got {seeds}")
    if save_steps is not None and save_steps < 0:
        raise RecipeError("--save_steps", f"must be >= 0 (0: no checkpoints), got {save_steps}")
    recipe = load_recipe(recipe_source)
    final = _final_targets(recipe).layers  # a recipe with no one final shape fails before any work
    teacher_layers = preflight(recipe)
    for arm in arms:
        arm_spec = arm_recipe(recipe, arm)
        if teacher_layers is not None:  # each arm's layer maps against the layers its student starts with
            start = teacher_layers
            if split_arm(arm)[0] in ("scratch", "kd") and final is not None:
                start = final.keep if final.keep is not None else max(1, round(final.keep_fraction * teacher_layers))
            check_layer_maps(arm_spec, start, teacher_layers)
    p = prepare(recipe, output_dir, quick=quick, checked=True)  # preflight ran above
    out = p.out
    # Each run evaluates the test split once, after its own training: the split is handed to
    # the runs' final evaluations and to nothing else.
    test = p.test.read("the runs' final evaluations")
    start, student_pre, student_encoded = student_start(p)
    expected = _shape(_final_shape_config(p, start).to_dict())
    transfer = transfer_set(p, student_pre) if p.recipe.augment is not None else None
    count = train_count(p, transfer, student_encoded)
    for seed in seed_list:
        for arm in arms:
            folder = out / arm / f"seed-{seed}"
            report = _finished(folder)
            if reusable(report, p, arm, seed, count):
                say(f"{arm} seed {seed}: done earlier, skipped ({folder / 'report.json'})")
                continue
            if report is not None:
                say(f"{arm} seed {seed}: the run in {folder} was made with another recipe, teacher, transfer set "
                    "or --quick: training it again")
            folder.mkdir(parents=True, exist_ok=True)
            say(f"{arm} seed {seed}: training")
            report = run_arm(p, arm, seed, transfer, folder, test, save_steps=save_steps)
            if report["shape"] != expected:
                raise AblationError(f"{arm} seed {seed} ended at {report['shape']}, not the recipe's final shape "
                                    f"{expected}: the comparison would be void")
    runs = []
    for arm in _arm_folders(out):  # every finished run that matches, this invocation's or an earlier one's
        folders = [f for f in (out / arm).glob("seed-*") if f.name.removeprefix("seed-").isdigit()]
        for folder in sorted(folders, key=lambda f: int(f.name.removeprefix("seed-"))):
            report = _finished(folder)
            if report is not None and reusable(report, p, arm, report.get("seed", -1), count):
                runs.append(report)
    command = _command(recipe_source, out, runs or [{"arm": a, "seed": s} for a in arms for s in seed_list], quick)
    teacher_validation = p.teacher_info.get(f"{p.adapter.metric}_validation")
    teacher_test = p.evaluate(p.teacher, p.preprocessor, test)
    summary = summarise(runs, p.recipe.name, command, {"validation": teacher_validation, "test": teacher_test,
                                                       "weights": p.teacher_info.get("weights")}, quick,
                        transfer_set=transfer is not None, balance_by=p.recipe.training.balance_by)
    write_outputs(out, summary)
    return summary


def _command(recipe_source, out: Path, runs: list[dict[str, Any]], quick: bool) -> str:
    """The command(s) that make exactly the runs the summary holds: one per set of seeds (arms
    with more seeds than others, e.g. the two a claim compares, get their own), the arms named
    unless they are the default set with one set of seeds (a plain --seeds also trains scratch
    and kd). Seeds as a list, one seed with a trailing comma (``--seeds 0`` is a count of none)."""
    recipe = shlex.quote(str(recipe_source)) if isinstance(recipe_source, (str, Path)) else "recipe.yaml"
    groups: dict[tuple[int, ...], list[str]] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        groups.setdefault(tuple(sorted({r["seed"] for r in runs if r["arm"] == arm})), []).append(arm)
    default = len(groups) == 1 and set(next(iter(groups.values()))) == set(ARMS)
    return " && ".join(f"pakd ablate {recipe} --output-dir {shlex.quote(str(out))} --seeds {','.join(map(str, seeds))}"
                       + ("," if len(seeds) == 1 else "") + ("" if default else f" --arms {','.join(arms)}")
                       + (" --quick" if quick else "") for seeds, arms in groups.items())


def seed_stats(values: list[float], higher_is_better: bool = True) -> dict[str, Any]:
    """Mean, sample sd (0 for one value), worst value and count of one arm's per-seed figures."""
    # Unrounded: the table rounds once, to 4 places (rounding here first made 0.007751 print as 0.0077).
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "worst": min(values) if higher_is_better else max(values), "n": len(values)}


def paired(a: dict[int, float], b: dict[int, float], lower_is_better: bool = False) -> dict[str, Any] | None:
    """A minus B over the seeds both ran: the mean and sample sd of the per-seed differences, and on
    how many seeds A is ahead (above B for accuracy, below for perplexity). None without a shared seed."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    d = [a[s] - b[s] for s in common]
    return {"seeds": common, "n": len(d), "mean": statistics.fmean(d),
            "sd": statistics.stdev(d) if len(d) > 1 else 0.0,
            "a_ahead": sum((x < 0) if lower_is_better else (x > 0) for x in d), "per_seed": d}


def _metric(runs: list[dict[str, Any]]) -> str:
    """The runs' metric: ``accuracy`` (reports written before the key existed) or ``perplexity``."""
    return (runs[0].get("metric") if runs else None) or "accuracy"


def summarise(runs: list[dict[str, Any]], recipe: str, command: str, teacher: dict[str, float], quick: bool,
              transfer_set: bool = False, balance_by: str | None = None) -> dict[str, Any]:
    """Per-arm statistics over seeds, the shape check, and the claim (PaKD vs the best other arm on
    validation). ``transfer_set``: the arms trained on the recipe's perturbed copies (``augment``).
    ``balance_by``: the column whose values every arm drew equally often (``training.balance_by``)."""
    shapes = {json.dumps(r["shape"], sort_keys=True) for r in runs}
    if len(shapes) > 1:
        raise AblationError(f"the arms' students differ in shape ({'; '.join(sorted(shapes))}): the comparison is void")
    metric = _metric(runs)
    up = metric != "perplexity"
    arms: dict[str, Any] = {}
    for run in runs:
        arms.setdefault(run["arm"], {"runs": []})["runs"].append(run)
    for arm, entry in arms.items():
        entry["validation"] = seed_stats([r[f"{metric}_validation"] for r in entry["runs"]], up)
        entry["test"] = seed_stats([r[f"{metric}_test"] for r in entry["runs"]], up)
        entry["params"] = entry["runs"][0]["params"]
        entry["bytes"] = entry["runs"][0]["bytes"]
    claim = None
    others = [a for a in arms if split_arm(a)[0] != "pakd"]  # the best of every baseline, tuned variants included
    if "pakd" in arms and others:
        pick = max if up else min
        best = pick(others, key=lambda a: arms[a]["validation"]["mean"])
        margin = arms["pakd"]["validation"]["mean"] - arms[best]["validation"]["mean"]
        # The spread of the difference over seeds: within it of the line is "at the line". When both
        # arms ran the same seeds it is the sd of the per-seed differences (a seed gives both arms one
        # data order, and the arms that start from the teacher one start, so seeds move them alike);
        # otherwise the two arms' spreads combined, as if independent.
        unpaired = math.hypot(arms["pakd"]["validation"]["sd"], arms[best]["validation"]["sd"])
        by_seed = [{r["seed"]: r[f"{metric}_validation"] for r in arms[a]["runs"]} for a in ("pakd", best)]
        same = set(by_seed[0]) == set(by_seed[1]) and len(by_seed[0]) > 1  # one seed has no spread to pair
        pair = paired(*by_seed, lower_is_better=not up) if same else None
        sd = pair["sd"] if pair else unpaired
        # accuracy: PaKD at least a point above the best baseline; perplexity: below it at all
        target = 0.01 if up else 0.0
        gain = margin if up else -margin
        # a tie is not a win: perplexity must be strictly below the best baseline's
        met = gain >= target if up else gain > target
        claim = {"best_other_arm": best, "pakd_minus_best_validation": margin, "sd": sd,
                 "sd_paired": pair is not None, "sd_unpaired": unpaired,
                 "pakd_ahead": pair["a_ahead"] if pair else None, "n_seeds": pair["n"] if pair else None,
                 "target": target, "met": met, "at_the_line": abs(gain - target) <= sd}
    return {"recipe": recipe, "command": command, "commit": _source_commit(), "quick": quick, "metric": metric,
            "transfer_set": transfer_set, "balance_by": balance_by,
            "shape": runs[0]["shape"] if runs else None, "teacher": teacher,
            "arms": {a: arms[a] for a in sorted(arms, key=_arm_order)}, "claim": claim}


def _arm_order(spec: str) -> tuple[int, float]:
    name, scale = split_arm(spec)
    return ARMS.index(name), scale


def _arm_folders(out: Path) -> list[str]:
    """The arm folders under OUT (``kd``, ``kd@5``, ...), in table order."""
    names = []
    for folder in out.iterdir() if out.is_dir() else ():
        try:
            if arm_name(folder.name) != folder.name:
                continue
        except RecipeError:
            continue
        names.append(folder.name)
    return sorted(names, key=_arm_order)


def _fmt(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.4f} ± {stats['sd']:.4f} (worst {stats['worst']:.4f}, n={stats['n']})"


def write_outputs(out: Path, summary: dict[str, Any]) -> None:
    """ablation.json, ablation.md and ablation.png, each written to a temporary file and renamed."""
    def atomic(name: str, text: str) -> None:
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)

    atomic("ablation.json", json.dumps(summary, indent=2) + "\n")
    teacher = summary["teacher"]
    metric = summary.get("metric", "accuracy")
    lines = [
        f"# Ablation: {summary['recipe']}" + (f" (quick smoke run: the {metric} figures mean nothing)" if summary["quick"] else ""),
        "",
        f"Every arm trains a student of the same shape ({', '.join(f'{k} {v}' for k, v in (summary['shape'] or {}).items())}) "
        "for the same number of steps on the same examples, with the recipe's stage lengths and learning rates "
        "(ARM@SCALE: every learning rate times SCALE, a baseline tuned on validation). The label-only arms (scratch, "
        + ("prune-only) give each perturbed copy of the transfer set its source's label. " if summary.get("transfer_set")
           else "prune-only) learn from the data's own targets, without the teacher. ")
        + (f"Every arm drew each value of `{summary['balance_by']}` equally often (`training.balance_by`). "
           if summary.get("balance_by") else "")
        + "Choices are made on validation; test is read once per run.",
        "",
        f"Teacher: validation {teacher['validation']:.4f}, test {teacher['test']:.4f}"
        + (f" (weights {teacher['weights']}: every run below learned from this one)." if teacher.get("weights") else "."),
        "",
        f"| arm | validation {metric} | test {metric} | params | bytes | steps | training (min, mean) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for arm, entry in summary["arms"].items():
        minutes = statistics.mean(r["train_seconds"] for r in entry["runs"]) / 60
        lines.append(f"| {arm} | {_fmt(entry['validation'])} | {_fmt(entry['test'])} | {entry['params']:,} | "
                     f"{entry['bytes']:,} | {entry['runs'][0]['steps']} | {minutes:.1f} |")
    claim = summary.get("claim")
    if claim:
        scale, places = (1, 3) if metric == "perplexity" else (100, 2)
        spread = f"sd of the difference {claim.get('sd', 0) * scale:.{places}f}"
        if claim.get("sd_paired"):
            spread = (f"{spread} paired by seed, PaKD ahead on {claim['pakd_ahead']} of {claim['n_seeds']} seeds; "
                      f"{claim['sd_unpaired'] * scale:.{places}f} unpaired")
        lines += ["", f"PaKD minus the best other arm ({claim['best_other_arm']}) on validation"
                      + (f" perplexity: {claim['pakd_minus_best_validation']:+.3f} ({spread}; "
                         "target: below 0, lower is better): " if metric == "perplexity" else
                         f": {claim['pakd_minus_best_validation'] * 100:+.2f} points ({spread}; target: +1.00): ")
                      + ("met" if claim["met"] else "not met") + (", at the line." if claim.get("at_the_line") else ".")]
    lines += ["", f"Command: `{summary['command']}`" + (f" at commit {summary['commit']}" if summary.get("commit") else ""), ""]
    atomic("ablation.md", "\n".join(lines))
    _figure(out, summary)


def _figure(out: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    metric = summary.get("metric", "accuracy")
    fig, ax = plt.subplots(figsize=(1.3 * len(arms) + 2.5, 3.6), dpi=110)
    for offset, split, color in ((-0.12, "validation", "tab:blue"), (0.12, "test", "tab:orange")):
        means = [summary["arms"][a][split]["mean"] for a in arms]
        sds = [summary["arms"][a][split]["sd"] for a in arms]
        ax.errorbar([i + offset for i in range(len(arms))], means, yerr=sds, fmt="o", capsize=4, color=color, label=split)
        for i, a in enumerate(arms):
            ax.scatter([i + offset] * len(summary["arms"][a]["runs"]),
                       [r[f"{metric}_{split}"] for r in summary["arms"][a]["runs"]], s=8, color=color, alpha=0.4)
        value = summary["teacher"].get(split)
        if value is not None and not math.isnan(value):
            ax.axhline(value, color=color, linestyle="--", linewidth=0.8, label=f"teacher ({split})")
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel(metric + (" (lower is better)" if metric == "perplexity" else ""))
    ax.set_title(f"{summary['recipe']}: same-shape students (mean ± sd over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = out / ".ablation.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(out / "ablation.png")
