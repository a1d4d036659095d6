"""PaKDTrainer: Trainer equivalence, frozen teacher, GA exactness, stages, resume, input errors."""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import (
    BertForSequenceClassification,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from pakd_hf import PaKDTrainer, PaKDTrainingArguments, RecipeError, load_recipe
from pakd_hf.trainer import TEACHER_LOGITS, add_teacher_logits
from toy import tiny_bert

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "recipes" / "examples" / "tiny-bert-two-stage.yaml"


def targs(out, cls=PaKDTrainingArguments, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        logging_steps=1,
    )
    base.update(kw)
    return cls(**base)


def distil_recipe(steps=6, hidden=True, attention=True, **stage_kw):
    dist = {"temperature": 2.0, "alpha": 0.6}
    if hidden:
        dist["hidden"] = {"weight": 1.0, "layer_map": "auto"}
    if attention:
        dist["attention"] = {"weight": 0.5, "layer_map": "auto"}
    return {"name": "t", "task": "text-classification", "stages": [{"name": "s", "steps": steps, "distillation": dist, **stage_kw}]}


def accuracy(model, ds):
    model.eval()
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor(ds["input_ids"]), attention_mask=torch.tensor(ds["attention_mask"])
        ).logits
    return (logits.argmax(-1) == torch.tensor(ds["labels"])).float().mean().item()


def test_without_teacher_and_recipe_it_is_exactly_trainer(toy_data, tmp_path):
    runs = {}
    for name, cls, targs_cls in (("hf", Trainer, TrainingArguments), ("pakd", PaKDTrainer, PaKDTrainingArguments)):
        model = tiny_bert(dropout=0.1, seed=3)  # dropout on: the RNG streams must match too
        args = targs(tmp_path / name, cls=targs_cls, max_steps=8, save_strategy="steps", save_steps=4)
        trainer = cls(model=model, args=args, train_dataset=toy_data)
        trainer.train()
        # Trainer's own checkpoint limit and resume (its checkpoints carry no PaKD state)
        args = targs(tmp_path / name, cls=targs_cls, max_steps=12, save_strategy="steps", save_steps=4, save_total_limit=1)
        trainer = cls(model=model, args=args, train_dataset=toy_data)
        trainer.train(resume_from_checkpoint=True)
        losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
        files = sorted(p.relative_to(tmp_path / name).as_posix() for p in (tmp_path / name).rglob("*") if p.is_file())
        runs[name] = (losses, {k: v.clone() for k, v in model.state_dict().items()}, files)
    assert runs["hf"][0] == runs["pakd"][0] and len(runs["hf"][0]) == 12
    for key, value in runs["hf"][1].items():
        assert torch.equal(value, runs["pakd"][1][key]), key
    assert runs["hf"][2] == runs["pakd"][2]
    assert "checkpoint-12/model.safetensors" in runs["hf"][2]
    assert {f.split("/")[0] for f in runs["hf"][2] if f.startswith("checkpoint-")} == {"checkpoint-12"}


def test_teacher_is_frozen_and_never_saved(toy_data, teacher, tmp_path):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
    args = targs(tmp_path / "run", save_strategy="steps", save_steps=3)
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=toy_data, recipe=distil_recipe())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    class StepStartGrads(TrainerCallback):  # each step's gradients are its own (Trainer clears the model's only)
        seen: list = []
        stepped: list = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.seen.append([p.grad is None for p in trainer.distill_projections.parameters()])

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.stepped.append(all(p.grad is not None for p in trainer.distill_projections.parameters()))

    trainer.add_callback(StepStartGrads())
    trainer.train()
    assert len(StepStartGrads.seen) == 6 and all(all(step) for step in StepStartGrads.seen), StepStartGrads.seen
    assert StepStartGrads.stepped == [True] * 6  # ...and every step has them

    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), f"teacher changed: {key}"
    assert not teacher.training
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in student.parameters()} <= optimised
    # The hidden-state projections train with the student...
    assert trainer.distill_projections is not None
    assert {id(p) for p in trainer.distill_projections.parameters()} <= optimised

    checkpoint = tmp_path / "run" / "checkpoint-6"
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    expected = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    assert set(saved) <= set(expected) and len(saved) >= len(expected) - 2  # tied/buffer keys may be skipped
    assert all(saved[k] == expected[k] for k in saved)
    state = json.loads((checkpoint / "pakd_state.json").read_text())
    assert state["stage_name"] == "s" and state["recipe_fingerprint"] == trainer.recipe.fingerprint()
    assert (checkpoint / "pakd_recipe.yaml").is_file()
    assert (checkpoint / "pakd_distill_projections.safetensors").is_file()

    # ...but are not part of the exported student.
    final = tmp_path / "final"
    trainer.save_model(str(final))
    assert (final / "pakd_recipe.yaml").is_file()
    assert not (final / "pakd_distill_projections.safetensors").exists()
    assert load_recipe(final / "pakd_recipe.yaml") == trainer.recipe


class GradCapture(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.grads is None:
            named = list(self.trainer.model.named_parameters())
            if self.trainer.distill_projections is not None:
                named += [("proj." + n, p) for n, p in self.trainer.distill_projections.named_parameters()]
            self.grads = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}


@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "pure-distillation"])
def test_gradient_accumulation_matches_one_big_batch(toy_data, teacher, tmp_path, with_labels):
    data = toy_data if with_labels else toy_data.remove_columns("labels")
    grads = {}
    for bs, ga in ((8, 1), (4, 2)):
        student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
        args = targs(tmp_path / f"{bs}x{ga}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_grad_norm=0.0)
        trainer = PaKDTrainer(
            model=student, teacher_model=copy.deepcopy(teacher), args=args, train_dataset=data, recipe=distil_recipe(steps=1)
        )
        capture = GradCapture(trainer)
        trainer.add_callback(capture)
        trainer.train()
        grads[(bs, ga)] = capture.grads
    one, accumulated = grads[(8, 1)], grads[(4, 2)]
    assert one.keys() == accumulated.keys() and any(k.startswith("proj.") for k in one)
    for name in one:
        torch.testing.assert_close(accumulated[name], one[name], rtol=1e-4, atol=1e-6, msg=name)


def test_max_grad_norm_bounds_the_student_and_its_projections_together(toy_data, teacher, tmp_path):
    """The projections are trained by the same optimizer as the student: the first step's
    gradients, clipped to a small max_grad_norm, are the unclipped ones scaled by one factor
    (bound / norm of all of them), and the logged grad_norm is that joint norm."""
    runs = {}
    for bound in (0.0, 1.0e-3):
        student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
        args = targs(tmp_path / f"clip{bound}", per_device_train_batch_size=8, max_grad_norm=bound, logging_steps=1)
        trainer = PaKDTrainer(model=student, teacher_model=copy.deepcopy(teacher), args=args, train_dataset=toy_data,
                              recipe=distil_recipe(steps=1))
        capture = GradCapture(trainer)
        trainer.add_callback(capture)
        trainer.train()
        logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
        runs[bound] = (capture.grads, logged)
    raw, clipped = runs[0.0][0], runs[1.0e-3][0]
    assert raw.keys() == clipped.keys() and any(k.startswith("proj.") for k in raw)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw.values()]))
    projections = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for k, g in raw.items() if k.startswith("proj.")]))
    assert projections > 1.0e-3  # the projections alone would be clipped: the bound matters for them
    scale = 1.0e-3 / (total + 1.0e-6)  # torch's clip_grad_norm_ factor
    for name, grad in raw.items():
        torch.testing.assert_close(clipped[name], grad * scale, rtol=1e-4, atol=1e-9, msg=name)
    assert runs[1.0e-3][1][0] == pytest.approx(float(total), rel=1e-4)
    assert runs[0.0][1][0] == pytest.approx(float(total), rel=1e-4)  # unclipped, the same joint norm is logged


def test_cached_teacher_logits_replace_the_teachers_pass(toy_data, teacher, tmp_path):
    """A `teacher_logits` column gives the same training with no teacher pass where only
    logits are distilled; stages that distil hidden states still run the teacher."""
    data = toy_data.remove_columns("labels")  # a transfer set: the teacher's outputs are the targets
    cached = add_teacher_logits(data, teacher, None, batch_size=48)
    with torch.no_grad():
        expected = teacher(input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])).logits
    torch.testing.assert_close(torch.tensor(cached[TEACHER_LOGITS]), expected, rtol=1e-4, atol=1e-5)
    recipe = {"name": "c", "task": "text-classification", "stages": [
        {"name": "logits", "steps": 4, "distillation": {"temperature": 2.0}},
        {"name": "hidden", "steps": 3, "distillation": {"temperature": 2.0, "hidden": {"weight": 1.0}}},
    ]}
    runs = {}
    for name, train in (("teacher", data), ("cached", cached)):
        student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
        trainer = PaKDTrainer(model=student, teacher_model=teacher, args=targs(tmp_path / name, per_device_train_batch_size=8),
                              train_dataset=train, recipe=recipe)
        calls = []
        handle = teacher.register_forward_hook(lambda *a: calls.append(trainer.state.global_step))
        trainer.train()
        handle.remove()
        losses = [h["kd_logits"] for h in trainer.state.log_history if "kd_logits" in h]
        runs[name] = (losses, student.state_dict(), calls)
    assert runs["teacher"][2] == [0, 1, 2, 3, 4, 5, 6]
    assert runs["cached"][2] == [4, 5, 6]  # only the hidden-state stage ran the teacher
    assert len(runs["cached"][0]) == 7
    assert runs["cached"][0] == pytest.approx(runs["teacher"][0], rel=1e-4, abs=1e-6)
    for key, value in runs["teacher"][1].items():
        torch.testing.assert_close(runs["cached"][1][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_logit_mse_loss_is_what_the_stage_minimises(toy_data, teacher, tmp_path):
    """`distillation.loss: mse`: the logged kd_logits of the first step is the mean squared
    logit difference of the untrained student, and it falls with training."""
    data = toy_data.remove_columns("labels")
    recipe = {"name": "m", "task": "text-classification",
              "stages": [{"name": "mse", "steps": 6, "distillation": {"loss": "mse"}}]}
    student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
    rows = data.select(range(8))
    ids, mask = torch.tensor(rows["input_ids"]), torch.tensor(rows["attention_mask"])
    with torch.no_grad():
        student.eval()
        expected = (student(input_ids=ids, attention_mask=mask).logits - teacher(input_ids=ids, attention_mask=mask).logits).pow(2).mean()
    args = targs(tmp_path / "mse", per_device_train_batch_size=8, logging_steps=1)
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, recipe=recipe)
    trainer.get_train_dataloader = lambda: torch.utils.data.DataLoader(  # fixed order: the first batch is `rows`
        data.with_format("torch", columns=["input_ids", "attention_mask"]), batch_size=8)
    trainer.train()
    losses = [h["kd_logits"] for h in trainer.state.log_history if "kd_logits" in h]
    assert losses[0] == pytest.approx(expected.item(), rel=1e-4)  # dropout is off in tiny_bert
    assert losses[-1] < losses[0]


def test_two_stage_recipe_distils_a_smaller_bert(toy_data, teacher, tmp_path):
    teacher_acc = accuracy(teacher, toy_data)
    assert teacher_acc > 0.85, "the toy teacher should have learned the task"
    student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
    args = targs(tmp_path / "run", per_device_train_batch_size=16, logging_steps=4, recipe=str(EXAMPLE))
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=toy_data)
    first_optimizer = []
    trainer.add_callback(type("C", (TrainerCallback,), {"on_train_begin": lambda self, *a, **k: first_optimizer.append(trainer.optimizer)})())
    impls = {}  # step -> (student, teacher) attention implementation while that step runs

    def record(self, args, state, control, **kw):
        impls[state.global_step] = (student.config._attn_implementation, teacher.config._attn_implementation)

    trainer.add_callback(type("Attn", (TrainerCallback,), {"on_step_begin": record})())
    original = (student.config._attn_implementation, teacher.config._attn_implementation)
    assert original == ("sdpa", "sdpa")
    trainer.train()
    # Eager attention (slow, but the only one that returns attention maps) only while the stage
    # that distils attention runs; the models' own implementation before and after.
    assert {impls[s] for s in range(0, 64)} == {original}
    assert {impls[s] for s in range(64, 128)} == {("eager", "eager")}
    assert (student.config._attn_implementation, teacher.config._attn_implementation) == original

    spans = trainer.stage_spans
    assert [(s.start, s.end) for s in spans] == [(0, 64), (64, 128)]  # 4 epochs each, 16 steps per epoch
    assert trainer.optimizer is not first_optimizer[0]  # stage 2 got a fresh optimizer
    logs = [h for h in trainer.state.log_history if "loss" in h]
    stage0 = [h for h in logs if h["stage"] == 0]
    stage1 = [h for h in logs if h["stage"] == 1]
    assert stage0 and stage1
    for h in stage0:
        assert {"task", "kd_logits"} <= h.keys() and "kd_hidden" not in h
    for h in stage1:
        assert {"task", "kd_logits", "kd_hidden", "kd_attn"} <= h.keys()
    # Each stage follows its own schedule: warmup to 1e-2 in stage 0, restart from 3e-3 in stage 1.
    assert max(h["learning_rate"] for h in stage0) <= 1e-2 + 1e-12
    assert stage1[0]["learning_rate"] > stage0[-1]["learning_rate"]
    assert max(h["learning_rate"] for h in stage1) <= 3e-3 + 1e-12
    # Loss goes down within each stage.
    assert stage0[-1]["loss"] < stage0[0]["loss"]
    assert stage1[-1]["kd_hidden"] < stage1[0]["kd_hidden"]
    student_acc = accuracy(student, toy_data)
    assert student_acc > 0.85, (teacher_acc, student_acc)

    out = tmp_path / "student"
    trainer.save_model(str(out))
    reloaded = BertForSequenceClassification.from_pretrained(out)
    assert accuracy(reloaded, toy_data) == pytest.approx(student_acc)
    assert (out / "pakd_recipe.yaml").is_file()


def test_resume_mid_stage_continues_in_the_right_stage(toy_data, teacher, tmp_path):
    recipe = {
        "name": "resume",
        "task": "text-classification",
        "stages": [
            {"name": "one", "steps": 4, "learning_rate": 1e-3, "distillation": {"alpha": 0.5}},
            {"name": "two", "steps": 6, "learning_rate": 2e-4, "distillation": {"alpha": 0.5, "hidden": {}}},
        ],
    }

    def run(out, resume=None):
        student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
        args = targs(out, save_strategy="steps", save_steps=3, max_steps=1000)  # the recipe decides the length
        trainer = PaKDTrainer(model=student, teacher_model=copy.deepcopy(teacher), args=args, train_dataset=toy_data, recipe=recipe)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, student

    full, full_student = run(tmp_path / "full")
    assert full.state.global_step == 10
    state = json.loads((tmp_path / "full" / "checkpoint-6" / "pakd_state.json").read_text())
    assert (state["stage_index"], state["stage_name"], state["global_step"]) == (1, "two", 6)

    resumed, resumed_student = run(tmp_path / "full", resume=str(tmp_path / "full" / "checkpoint-6"))
    assert resumed.current_stage.name == "two"
    for key, value in full_student.state_dict().items():
        torch.testing.assert_close(resumed_student.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    after = [h for h in resumed.state.log_history if "loss" in h and h["step"] > 6]
    assert after and all(h["stage"] == 1 for h in after)

    other = dict(recipe, stages=[dict(recipe["stages"][0], steps=5), recipe["stages"][1]])
    student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=targs(tmp_path / "full"), train_dataset=toy_data, recipe=other)
    with pytest.raises(ValueError, match="different recipe"):
        trainer.train(resume_from_checkpoint=True)


@pytest.mark.parametrize(
    "case, error, fragment",
    [
        ("bad-recipe", RecipeError, "stages[0].distillation.temperature"),
        ("typo", RecipeError, "did you mean 'alpha'"),
        ("no-teacher", ValueError, "no teacher_model was given"),
        ("labels", ValueError, "predicts 3 labels but the student predicts 2"),
        ("layer-map", RecipeError, "stages[0].distillation.hidden.layer_map[0]"),
        ("optimizers", ValueError, "optimizer_cls_and_kwargs"),
        ("same-model", ValueError, "teacher_model is the student itself"),
    ],
)
def test_bad_inputs_fail_before_anything_is_written(toy_data, tmp_path, case, error, fragment):
    student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32)
    teacher = tiny_bert()
    recipe = distil_recipe()
    kwargs = {}
    if case == "bad-recipe":
        recipe["stages"][0]["distillation"]["temperature"] = -1
    elif case == "typo":
        recipe["stages"][0]["distillation"]["alpah"] = 0.3
    elif case == "no-teacher":
        teacher = None
    elif case == "labels":
        teacher = tiny_bert(num_labels=3)
    elif case == "layer-map":
        recipe["stages"][0]["distillation"]["hidden"]["layer_map"] = [[3, 1]]  # the student has hidden states 0..2
    elif case == "optimizers":
        kwargs["optimizers"] = (torch.optim.SGD(student.parameters(), lr=0.1), None)
    elif case == "same-model":
        teacher = student
    out = tmp_path / "never-written"
    with pytest.raises(error) as info:
        PaKDTrainer(model=student, teacher_model=teacher, args=targs(out), train_dataset=toy_data, recipe=recipe, **kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_arguments_parse_and_recipe_precedence(toy_data, tmp_path):
    (args,) = HfArgumentParser(PaKDTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "o"), "--recipe", str(EXAMPLE), "--use_cpu", "true", "--report_to", "none"]
    )
    assert args.recipe == str(EXAMPLE)
    teacher = tiny_bert()
    trainer = PaKDTrainer(model=tiny_bert(hidden=16, heads=2, layers=2, ffn=32), teacher_model=teacher, args=args, train_dataset=toy_data)
    assert trainer.recipe.name == "tiny-bert-two-stage"
    override = distil_recipe()
    trainer = PaKDTrainer(
        model=tiny_bert(hidden=16, heads=2, layers=2, ffn=32), teacher_model=teacher, args=args, train_dataset=toy_data, recipe=override
    )
    assert trainer.recipe.name == "t"


def test_private_trainer_methods_we_override_are_listed_and_exist(monkeypatch):
    """A transformers release that renames one fails loudly instead of leaving our override dead."""
    import inspect

    from transformers import Trainer

    from pakd_hf import trainer as module

    overridden = {n for n in vars(module.PaKDTrainer) if n.startswith("_") and not n.startswith("__") and hasattr(Trainer, n)}
    assert overridden == set(module.TRAINER_PRIVATE_OVERRIDES)
    for name in overridden:  # same parameters as the method it replaces
        ours = list(inspect.signature(getattr(module.PaKDTrainer, name)).parameters)
        theirs = list(inspect.signature(getattr(Trainer, name)).parameters)
        assert ours == theirs, name
    # Every private attribute PaKDTrainer reads or sets is listed (found in its source).
    import transformers.trainer

    theirs = set(re.findall(r"self\.(_[a-z][a-z_]*)\s*=", inspect.getsource(transformers.trainer)))
    used = set(re.findall(r"self\.(_[a-z][a-z_]*)", inspect.getsource(module))) & theirs
    assert used == set(module.TRAINER_PRIVATE_ATTRIBUTES), used ^ set(module.TRAINER_PRIVATE_ATTRIBUTES)
    for (method, parameter) in module.TRAINER_PRIVATE_PARAMETERS:
        assert parameter in inspect.signature(getattr(Trainer, method)).parameters
    original_save = Trainer.save_model
    monkeypatch.setattr(Trainer, "save_model", lambda self, output_dir=None: original_save(self, output_dir))
    with pytest.raises(RuntimeError, match=r"has no parameter _internal_call of Trainer\.save_model"):
        module.PaKDTrainer(model=None)
    monkeypatch.setattr(Trainer, "save_model", original_save)
    monkeypatch.delattr(Trainer, "_set_signature_columns_if_needed")
    with pytest.raises(RuntimeError, match=r"has no Trainer\._set_signature_columns_if_needed"):
        module.PaKDTrainer(model=None)


def test_evaluation_at_stage_ends_is_logged_and_leaves_training_as_it_was(toy_data, teacher, tmp_path):
    recipe = {"name": "t", "task": "text-classification", "stages": [
        {"name": "a", "steps": 4, "distillation": {"alpha": 0.5}},
        {"name": "b", "steps": 4, "distillation": {"alpha": 0.5, "hidden": {"weight": 1.0}}},
    ]}
    weights, logs = [], []
    for evaluate in (False, True):
        student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1, dropout=0.1)  # dropout draws random numbers
        args = targs(tmp_path / f"run-{evaluate}", eval_on_stage_end=evaluate, per_device_eval_batch_size=64)
        trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=toy_data,
                              eval_dataset=toy_data.select(range(64)), recipe=recipe)
        trainer.train()
        weights.append({k: v.clone() for k, v in student.state_dict().items()})
        logs.append([row["step"] for row in trainer.state.log_history if "eval_loss" in row])
    assert logs == [[], [4, 8]]  # one evaluation at the end of each stage
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same student


def test_releasing_device_memory_before_a_benchmark_keeps_the_student_and_its_log(toy_data, teacher, tmp_path):
    # compress --benchmark-device cuda: the training's models, optimizer state and accelerate's
    # references leave the device before the fresh benchmark processes load the saved folders.
    from pakd_hf.pipeline.compress import release_device_memory

    student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
    recipe = distil_recipe(steps=2, attention=False)  # hidden states through learned projections
    recipe["stages"].append({**recipe["stages"][0], "name": "s2"})  # a second stage rebuilds the optimizer
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=targs(tmp_path, max_steps=4),
                          train_dataset=toy_data, recipe=recipe)
    trainer.train()
    assert trainer.distill_projections is not None and trainer.callback_handler.optimizer is trainer.optimizer
    log = list(trainer.state.log_history)
    batch = {k: torch.tensor(toy_data[:4][k]) for k in ("input_ids", "attention_mask")}
    student.eval()
    with torch.no_grad():
        before = student(**batch).logits
    assert trainer.optimizer is not None and trainer.accelerator._optimizers
    release_device_memory(trainer, teacher)
    assert trainer.optimizer is None and trainer.lr_scheduler is None
    assert trainer.callback_handler.optimizer is None and trainer.callback_handler.lr_scheduler is None
    assert not trainer.accelerator._optimizers and not trainer.accelerator._models
    assert trainer.model_wrapped is student
    # (on a CPU-only machine the models were there already: this checks that nothing else moved)
    assert {p.device.type for m in (student, teacher, trainer.distill_projections) for p in m.parameters()} == {"cpu"}
    assert trainer.state.log_history == log
    with torch.no_grad():
        assert torch.equal(student(**batch).logits, before)
