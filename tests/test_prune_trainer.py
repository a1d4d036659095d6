"""Pruning inside PaKDTrainer: masks during a stage, compaction at its end, the optimizer
rebuilt, stock reload of the saved student, resume after compaction, unstructured and N:M
masks kept at zero, and bad pruning blocks rejected before training."""

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from pakd_hf import PaKDTrainer, PaKDTrainingArguments, RecipeError
from toy import run_stock, tiny_bert, tiny_vit, toy_dataset, toy_images

PRUNE_ALL = {"heads": {"keep": 2}, "ffn": {"keep_fraction": 0.5}, "layers": {"keep": 2}, "hidden": {"keep": 16}}


def targs(out, **kw):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=8, learning_rate=2e-3, report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0, logging_steps=2,
    )
    base.update(kw)
    return PaKDTrainingArguments(**base)


def prune_recipe(task, pruning, distil=True, prune_steps=8, recover_steps=4):
    dist = {"alpha": 0.5, "hidden": {"weight": 1.0}} if distil else None
    first = {"name": "prune", "steps": prune_steps, "pruning": pruning}
    second = {"name": "recover", "steps": recover_steps}
    if dist:
        first["distillation"] = dist
        second["distillation"] = dist
    return {"name": "p", "task": task, "stages": [first, second]}


class Snapshot(TrainerCallback):
    """Records the model's parameters right after the compaction (start of stage 2)."""

    def __init__(self, trainer, step):
        self.trainer, self.step, self.params = trainer, step, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.params = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}


FAMILIES = {
    "bert": (lambda: tiny_bert(seed=0), lambda: tiny_bert(seed=5), lambda: toy_dataset(128), "text-classification"),
    "vit": (lambda: tiny_vit(seed=0), lambda: tiny_vit(seed=5), lambda: toy_images(128), "image-classification"),
}


@pytest.fixture(scope="module")
def pruned_runs(tmp_path_factory):
    """Prune every structure kind of a tiny BERT and ViT inside PaKDTrainer (one run each)."""
    runs = {}
    for family, (make_student, make_teacher, make_data, task) in FAMILIES.items():
        out = tmp_path_factory.mktemp(family)
        student, teacher, data = make_student(), make_teacher(), make_data()
        recipe = prune_recipe(task, {**PRUNE_ALL, "frequency": 2, "importance": "taylor"})
        trainer = PaKDTrainer(
            model=student, teacher_model=teacher, args=targs(out / "run", save_strategy="steps", save_steps=5),
            train_dataset=data, recipe=recipe,
        )
        snap = Snapshot(trainer, 8)
        trainer.add_callback(snap)
        history = []
        trainer.add_callback(type("H", (TrainerCallback,), {
            "on_step_end": lambda self, args, state, control, **k: history.append(
                trainer.pruning.mask_state.structure().counts() if trainer.pruning.mask_state is not None else None)
        })())
        trainer.train()
        trainer.save_model(str(out / "student"))
        runs[family] = dict(trainer=trainer, student=student, data=data, out=out, snap=snap, history=history,
                            teacher=teacher, recipe=recipe)
    return runs


@pytest.mark.parametrize("family", list(FAMILIES))
def test_stage_prunes_compacts_and_keeps_training(pruned_runs, family):
    run = pruned_runs[family]
    trainer, student = run["trainer"], run["student"]
    cfg = student.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size, cfg.hidden_size) == (2, 2, 32, 16)
    # The schedule grew the masks gradually (cubic), reaching the targets by the end of stage 1.
    layers_kept = [h["layers"] for h in run["history"][:7]]
    assert layers_kept[0] == 4 and layers_kept == sorted(layers_kept, reverse=True)
    assert run["history"][7]["layers"] == 2 and run["history"][7]["hidden"] == 16  # compacted at step 8
    # After compaction the optimizer holds exactly the new parameters, and they train.
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in student.parameters()} <= optimised
    assert all(p.shape[0] <= 64 for p in trainer.optimizer.param_groups[0]["params"])
    after = dict(student.named_parameters())
    moved = [n for n, p in run["snap"].params.items() if not torch.equal(p, after[n].detach())]
    assert len(moved) > len(after) // 2, "parameters did not train after compaction"
    # Projections follow the hidden pruning (16 student dims -> 32 teacher dims).
    assert all(m.in_features == 16 for m in trainer.distill_projections.maps.values())


def test_saved_students_reload_with_stock_transformers_in_a_fresh_process(pruned_runs):
    jobs = []
    for family, run in pruned_runs.items():
        folder = run["out"] / "student"
        record = json.loads((folder / "pakd.json").read_text())
        assert record["structure"]["layers"] and len(record["structure"]["hidden"]) == 16
        assert record["teacher"]["architecture"] == type(run["teacher"]).__name__
        assert (folder / "pakd_recipe.yaml").is_file()
        batch = run["data"][:5]
        if family == "bert":
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            inputs = {k: torch.tensor(v) for k, v in inputs.items()}
        else:
            inputs = {"pixel_values": batch["pixel_values"]}
        model = run["student"].eval()
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.save({"inputs": inputs, "logits": logits}, folder.parent / "expected.pt")
        auto = "AutoModelForSequenceClassification" if family == "bert" else "AutoModelForImageClassification"
        jobs.append((str(folder), auto))
    script = (
        "import json, sys, torch, transformers\n"
        "assert 'pakd_hf' not in sys.modules\n"
        "for folder, auto in json.loads(sys.argv[1]):\n"
        "    model = getattr(transformers, auto).from_pretrained(folder).eval()\n"
        "    exp = torch.load(folder.rsplit('/', 1)[0] + '/expected.pt', weights_only=True)\n"
        "    with torch.no_grad():\n"
        "        got = model(**exp['inputs']).logits\n"
        "    diff = (got - exp['logits']).abs().max().item()\n"
        "    print(folder, diff)\n"
        "    assert diff <= 1e-5, diff\n"
    )
    run_stock(script, json.dumps(jobs))


def test_resume_from_a_checkpoint_after_compaction(pruned_runs):
    run = pruned_runs["bert"]
    checkpoint = run["out"] / "run" / "checkpoint-10"
    state = json.loads((checkpoint / "pakd_state.json").read_text())
    assert state["stage_name"] == "recover" and len(state["structure"]["layers"]) == 2
    student = tiny_bert(seed=0)  # a fresh, unpruned model: resuming gives it the checkpoint's shapes
    trainer = PaKDTrainer(
        model=student, teacher_model=copy.deepcopy(run["teacher"]), args=targs(run["out"] / "run"),
        train_dataset=run["data"], recipe=run["recipe"],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 16
    # Two AdamW steps (lr 2e-3) from the checkpoint: a wrong optimizer state, LR or projection
    # would show as ~1e-3; float summation-order noise after compaction stays ~1e-6.
    for name, value in run["student"].state_dict().items():
        torch.testing.assert_close(student.state_dict()[name], value, rtol=0, atol=5e-5, msg=name)


@pytest.mark.parametrize("kind", ["unstructured", "n_m"])
def test_weight_masks_stay_zero_through_training(kind, tmp_path):
    pruning = {"unstructured": {"sparsity": 0.5}} if kind == "unstructured" else {"n_m": {"n": 2, "m": 4}}
    pruning.update(schedule="linear", frequency=2)
    student = tiny_bert(seed=0)
    recipe = prune_recipe("text-classification", pruning, distil=False, prune_steps=6, recover_steps=4)
    trainer = PaKDTrainer(model=student, args=targs(tmp_path / "run", weight_decay=0.1), train_dataset=toy_dataset(128), recipe=recipe)
    trainer.train()
    masks = trainer.pruning.mask_state.weight_masks
    assert masks
    linears = trainer.pruning.mask_state.adapter.prunable_linears()
    zeros = total = 0
    for key, mask in masks.items():
        weight = linears[key].weight.detach()
        assert torch.all(weight[~mask] == 0), key  # 4 more AdamW steps (with weight decay) after pruning
        zeros += int((weight == 0).sum())
        total += weight.numel()
        if kind == "n_m":
            groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
            assert int(groups.max()) <= 2
    assert zeros / total >= 0.49
    # Saved dense, reported as sparsity.
    trainer.save_model(str(tmp_path / "out"))
    record = json.loads((tmp_path / "out" / "pakd.json").read_text())
    assert record["sparsity"]["weights"] >= 0.49
    assert student.config.hidden_size == 32  # nothing structural was removed


@pytest.mark.parametrize(
    "pruning, fragment",
    [
        ({"ffn": {"keep_fraction": 1.5}}, "stages[0].pruning.ffn.keep_fraction"),
        ({"heads": {"keep": 0}}, "stages[0].pruning.heads.keep"),
        ({"head": {"keep": 2}}, "did you mean 'heads'"),
        ({"heads": {"keep": 5}}, "only 4 heads per layer"),
        ({"hidden": {"keep": 20}}, "stages[0].pruning"),  # 20 is not heads (4) x head_dim (8)
        ({}, "prunes nothing"),
        ({"heads": {"keep": 2}, "end_step": 99}, "past the stage's last step"),
    ],
)
def test_bad_pruning_blocks_fail_before_training(pruning, fragment, tmp_path):
    recipe = prune_recipe("text-classification", pruning, distil=False)
    out = tmp_path / "never"
    with pytest.raises(RecipeError) as info:
        PaKDTrainer(model=tiny_bert(), args=targs(out), train_dataset=toy_dataset(16), recipe=recipe)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    recipe = prune_recipe("text-classification", {"heads": {"keep": 1}}, distil=False)
    with pytest.raises(ValueError) as info:
        PaKDTrainer(model=model, args=targs(tmp_path / "never"), train_dataset=toy_dataset(16), recipe=recipe)
    message = str(info.value)
    assert "GPT2ForSequenceClassification" in message and "BERT" in message and "ViT" in message
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_global_budget_keeps_uniform_shapes_within_the_budget(metric, tmp_path):
    from pakd_hf.measure import count_macs

    data = toy_dataset(64)
    sample = {"input_ids": torch.tensor(data[:1]["input_ids"]), "attention_mask": torch.tensor(data[:1]["attention_mask"])}
    student = tiny_bert(seed=0)
    before = count_macs(student, sample) if metric == "macs" else sum(p.numel() for p in student.parameters())
    pruning = {"budget": {metric: 0.4, "kinds": ["heads", "ffn", "layers", "hidden"]}, "frequency": 2}
    recipe = prune_recipe("text-classification", pruning, distil=False, prune_steps=6, recover_steps=2)
    trainer = PaKDTrainer(model=student, args=targs(tmp_path / "run"), train_dataset=data, recipe=recipe)
    trainer.train()
    after = count_macs(student, sample) if metric == "macs" else sum(p.numel() for p in student.parameters())
    assert after <= 0.4 * before
    assert after >= 0.1 * before  # the largest shapes that fit, not the smallest
    cfg = student.config
    assert cfg.hidden_size == cfg.num_attention_heads * 8  # stock BERT: hidden tied to heads x head_dim


def test_budget_that_cannot_be_met_is_rejected_before_training(tmp_path):
    pruning = {"budget": {"params": 0.01, "kinds": ["ffn"]}}
    recipe = prune_recipe("text-classification", pruning, distil=False)
    with pytest.raises(RecipeError, match=r"stages\[0\].pruning.budget"):
        PaKDTrainer(model=tiny_bert(), args=targs(tmp_path / "never"), train_dataset=toy_dataset(16), recipe=recipe)
    assert not (tmp_path / "never").exists()


def test_non_uniform_recipe_saves_generated_code_that_reloads_both_ways(tmp_path):
    student, teacher, data = tiny_bert(seed=0), tiny_bert(seed=5), toy_dataset(128)
    pruning = {"heads": {"keep": 2}, "ffn": {"keep": 24}, "uniform": False, "frequency": 2}
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=targs(tmp_path / "run"), train_dataset=data,
                          recipe=prune_recipe("text-classification", pruning))
    trainer.train()
    folder = tmp_path / "student"
    trainer.save_model(str(folder))
    record = json.loads((folder / "pakd.json").read_text())
    assert record["custom_code"] is True and (folder / "modeling_pakd_bert.py").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" in config and sum(config["pakd_heads_per_layer"]) == 2 * 4
    assert len(set(config["pakd_ffn_per_layer"])) > 1  # the budget was spread unevenly across layers
    batch = data[:4]
    inputs = {"input_ids": torch.tensor(batch["input_ids"]), "attention_mask": torch.tensor(batch["attention_mask"])}
    with torch.no_grad():
        expected = student.eval()(**inputs).logits
    torch.save({"inputs": inputs, "logits": expected}, tmp_path / "expected.pt")
    for preamble, kwargs in (("", "trust_remote_code=True"), ("import pakd_hf\n", "")):
        script = (
            f"{preamble}import sys, torch\nfrom transformers import AutoModelForSequenceClassification\n"
            f"model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, {kwargs}).eval()\n"
            f"exp = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
            "with torch.no_grad():\n    got = model(**exp['inputs']).logits\n"
            "assert (got - exp['logits']).abs().max().item() <= 1e-5, (got - exp['logits']).abs().max()\n"
        )
        run_stock(script, pythonpath=str(Path(__file__).resolve().parents[1]) if preamble else None)


def test_uniform_recipe_that_needs_custom_code_says_how_to_get_it(tmp_path):
    recipe = prune_recipe("text-classification", {"heads": {"keep": 2}}, distil=False)  # hidden 32 != 2 x 8
    with pytest.raises(RecipeError, match="uniform: false"):
        PaKDTrainer(model=tiny_bert(), args=targs(tmp_path / "never"), train_dataset=toy_dataset(16), recipe=recipe)


def test_the_logs_carry_the_compression_curve(pruned_runs):
    """Beside the losses, every log has what the student keeps (tensorboard, wandb and trackio
    plot these): counts of the masks' target mid-stage, of the compact model after."""
    for family, run in pruned_runs.items():
        logs = [h for h in run["trainer"].state.log_history if "loss" in h]
        assert logs and all("pakd/layers" in h and "pakd/ffn" in h for h in logs), family
        last = logs[-1]  # logging every 2 steps; the 8 pruning steps prune every 2
        assert (last["pakd/layers"], last["pakd/heads"], last["pakd/hidden"]) == (2, 4, 16), family
        assert last["pakd/ffn"] == 2 * 32  # keep_fraction 0.5 of 64 in each of the 2 layers
        counts = [h["pakd/ffn"] for h in logs]
        assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1], (family, counts)
        # Parameters and MACs where a stock config holds the structure (per-layer shapes mid-stage:
        # counts only), always after the compaction.
        params = [h["pakd/params_kept"] for h in logs if "pakd/params_kept" in h]
        assert params == sorted(params, reverse=True) and 0 < params[-1] < 0.5, (family, params)
        assert 0 < last["pakd/macs_kept"] < 1
        # The last figure is the saved student's size relative to its start.
        saved = sum(p.numel() for p in run["student"].parameters())
        start = sum(p.numel() for p in (tiny_bert if family == "bert" else tiny_vit)(seed=0).parameters())
        assert last["pakd/params_kept"] == pytest.approx(saved / start, abs=1e-4)


def test_model_init_the_pruning_follows_the_model_trainer_builds_in_train(tmp_path):
    """With `model_init`, Trainer builds a new model in train(): pruning (masks, compaction, the
    saved pakd.json) acts on that one, not on the model made at construction."""
    teacher = tiny_bert(seed=5)
    made = []

    def model_init():
        made.append(tiny_bert(seed=0))
        return made[-1]

    trainer = PaKDTrainer(model_init=model_init, teacher_model=teacher, args=targs(tmp_path / "run"),
                          train_dataset=toy_dataset(64), recipe=prune_recipe("text-classification", {"layers": {"keep": 2}}))
    trainer.train()
    assert len(made) == 2 and trainer.model is made[1] and trainer.pruning.model is made[1]
    assert made[1].config.num_hidden_layers == 2 and made[0].config.num_hidden_layers == 4
    trainer.save_model(str(tmp_path / "student"))
    record = json.loads((tmp_path / "student" / "pakd.json").read_text())
    assert len(record["structure"]["layers"]) == 2


@pytest.mark.parametrize("alpha, warned", [(1.0, True), (0.5, False)])
def test_a_zero_loss_start_under_taylor_is_said(tmp_path, caplog, alpha, warned):
    """A student equal to its teacher, without dropout, distilled on logits alone starts at loss
    0: Taylor scores are round-off there, and the trainer says so once, naming the stage. With a
    label term the loss is real and nothing is said."""
    teacher = tiny_bert(seed=0)
    student = copy.deepcopy(teacher)
    recipe = {"name": "z", "task": "text-classification", "stages": [
        {"name": "cut", "steps": 4, "distillation": {"alpha": alpha},
         "pruning": {"ffn": {"keep_fraction": 0.5}, "importance": "taylor", "frequency": 2}}]}
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=targs(tmp_path / "run"),
                          train_dataset=toy_dataset(64), recipe=recipe)
    with caplog.at_level("WARNING", logger="pakd_hf.trainer"):
        trainer.train()
    said = [r.getMessage() for r in caplog.records if "ranks round-off" in r.getMessage()]
    assert len(said) == (1 if warned else 0), said
    if warned:
        assert said[0].startswith("stage 'cut': the loss of its first batch is") and "importance 'taylor'" in said[0]
