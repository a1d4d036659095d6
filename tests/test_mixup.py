"""mixup in distillation stages (``distillation.mixup``): the blend, its task term, the teacher
reading the very blend the student reads, a PaKDTrainer stage, and the refusals."""

import pytest
import torch
import torch.nn.functional as F

from pakd_hf.distill import distillation_loss, logit_kd_per_sample, mix_batch, mixed_task_per_sample
from pakd_hf.recipe import Distillation, RecipeError, load_recipe
from toy import tiny_bert, tiny_vit, toy_images


def _mixed(seed, inputs, alpha=0.4):
    torch.manual_seed(seed)
    return mix_batch(inputs, alpha)


def test_each_example_is_blended_with_a_partner_and_a_seed_repeats_the_draw():
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6)
    mixed, perm, lam = _mixed(0, {"pixel_values": x, "labels": y})
    assert sorted(perm.tolist()) == list(range(6))
    assert lam.shape == (6,) and bool(((lam >= 0) & (lam <= 1)).all())
    w = lam.view(6, 1, 1, 1)
    torch.testing.assert_close(mixed["pixel_values"], w * x + (1 - w) * x[perm])
    assert mixed["labels"] is y  # the labels stay; the task term weighs both
    again, perm2, lam2 = _mixed(0, {"pixel_values": x, "labels": y})
    assert torch.equal(again["pixel_values"], mixed["pixel_values"]) and torch.equal(perm2, perm) and torch.equal(lam2, lam)
    other = _mixed(1, {"pixel_values": x, "labels": y})[0]
    assert not torch.equal(other["pixel_values"], mixed["pixel_values"])


def test_alpha_sets_how_far_the_blends_go():
    x = torch.randn(4000, 2)
    mild = _mixed(0, {"input_features": x}, alpha=0.2)[2]
    even = _mixed(0, {"input_features": x}, alpha=100.0)[2]
    assert ((mild < 0.1) | (mild > 0.9)).float().mean() > 0.5  # Beta(0.2, 0.2): mostly near one example
    assert abs(float(even.mean()) - 0.5) < 0.01 and float(even.std()) < 0.05  # Beta(100, 100): halves


def test_a_seed_draws_apart_from_torchs_random_state():
    x = torch.randn(6, 2)
    torch.manual_seed(5)
    first = mix_batch({"input_features": x}, 0.4, seed=11)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)  # the global stream did not move
    torch.manual_seed(99)
    again = mix_batch({"input_features": x}, 0.4, seed=11)
    assert torch.equal(again[0]["input_features"], first[0]["input_features"])
    assert not torch.equal(mix_batch({"input_features": x}, 0.4, seed=12)[2], first[2])


def test_raw_samples_are_blended_and_their_attention_masks_joined():
    x = torch.randn(4, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    mixed, perm, lam = mix_batch({"input_values": x, "attention_mask": mask}, 0.4, seed=0)
    assert perm.tolist() != list(range(4))  # the draw pairs some clip with another
    longest = torch.maximum(perm, torch.arange(4)) + 1
    assert mixed["attention_mask"].sum(1).tolist() == longest.tolist()
    w = lam.view(4, 1)
    torch.testing.assert_close(mixed["input_values"], w * x + (1 - w) * x[perm])
    with pytest.raises(ValueError, match="distillation.mixup blends pixel_values / input_features / input_values"):
        mix_batch({"input_ids": torch.ones(2, 3, dtype=torch.long)}, 0.4)


def test_the_task_term_weighs_both_labels_by_the_blend():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    perm = torch.tensor([4, 3, 2, 1, 0])
    lam = torch.tensor([1.0, 0.0, 0.3, 0.5, 0.9])
    got = mixed_task_per_sample(logits, labels, perm, lam)
    ce = F.cross_entropy(logits, labels, reduction="none")
    ce_partner = F.cross_entropy(logits, labels[perm], reduction="none")
    torch.testing.assert_close(got, lam * ce + (1 - lam) * ce_partner)
    torch.testing.assert_close(got[0], ce[0])
    torch.testing.assert_close(got[1], ce_partner[1])
    from transformers.trainer_pt_utils import LabelSmoother

    smoothed = mixed_task_per_sample(logits, labels, perm, lam, label_smoothing=0.1)
    for i in (0, 1):  # lam 1 and 0: one label each, as Trainer's label smoother scores it
        y = labels[i] if i == 0 else labels[perm][i]
        torch.testing.assert_close(smoothed[i], LabelSmoother(0.1)({"logits": logits[i:i + 1]}, y.view(1)))
    with pytest.raises(ValueError, match="single-label classification"):
        mixed_task_per_sample(logits[:, :1], torch.randn(5), perm, lam)


def test_the_teacher_reads_the_blend_the_student_reads_and_no_cached_logits():
    teacher = tiny_vit(seed=0).eval()
    student = tiny_vit(hidden=16, heads=2, ffn=32, seed=1).train()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    seen = []
    handle = teacher.register_forward_hook(lambda m, a, kw, out: seen.append((kw["pixel_values"], out.logits)), with_kwargs=True)
    total, _, sums, n = distillation_loss(student, teacher, {"pixel_values": x, "labels": y}, Distillation(mixup=0.4, alpha=0.25),
                                          label_names=["labels"], cached_logits=torch.zeros(8, 3), mix_seed=3)
    handle.remove()
    mixed, perm, lam = mix_batch({"pixel_values": x, "labels": y}, 0.4, seed=3)
    assert n == 8 and len(seen) == 1  # the cache holds logits of the unmixed images: the teacher runs
    torch.testing.assert_close(seen[0][0], mixed["pixel_values"], rtol=0, atol=0)
    with torch.no_grad():
        s_logits = student(pixel_values=mixed["pixel_values"]).logits
    torch.testing.assert_close(sums["task"], mixed_task_per_sample(s_logits, y, perm, lam).sum())
    torch.testing.assert_close(sums["kd_logits"], logit_kd_per_sample(s_logits, seen[0][1], 2.0).sum())
    torch.testing.assert_close(total, 0.25 * sums["kd_logits"] + 0.75 * sums["task"])


def test_label_smoothing_a_custom_label_column_and_batches_without_labels():
    from transformers.trainer_pt_utils import LabelSmoother

    teacher = tiny_vit(seed=0).eval()
    student = tiny_vit(hidden=16, heads=2, ffn=32, seed=1).train()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    mixed, perm, lam = mix_batch({"pixel_values": x}, 0.4, seed=4)
    with torch.no_grad():
        s_logits = student(pixel_values=mixed["pixel_values"]).logits
    _, _, sums, _ = distillation_loss(student, teacher, {"pixel_values": x, "target": y}, Distillation(mixup=0.4),
                                      label_names=["target"], label_smoother=LabelSmoother(0.1), mix_seed=4)
    torch.testing.assert_close(sums["task"], mixed_task_per_sample(s_logits, y, perm, lam, label_smoothing=0.1).sum())
    total, _, sums, _ = distillation_loss(student, teacher, {"pixel_values": x}, Distillation(mixup=0.4, alpha=0.25),
                                          label_names=["labels"], mix_seed=4)
    assert "task" not in sums  # no labels: pure distillation on the blends, weight 1
    torch.testing.assert_close(total, sums["kd_logits"])


def _args(folder, **kw):
    from pakd_hf import PaKDTrainingArguments

    return PaKDTrainingArguments(output_dir=str(folder), per_device_train_batch_size=8, report_to=[], save_strategy="no",
                                 use_cpu=True, disable_tqdm=True, logging_steps=1, **kw)


def test_a_trainer_stage_distils_on_blends_and_evaluation_and_a_stage_without_mixup_do_not(tmp_path):
    from pakd_hf import PaKDTrainer

    data = toy_images(32)
    rows = {tuple(r.flatten().tolist()) for r in data["pixel_values"]}
    teacher = tiny_vit(seed=0).eval()
    recipe = {"name": "m", "task": "image-classification", "stages": [
        {"name": "mix", "steps": 3, "distillation": {"mixup": 0.4}},
        {"name": "plain", "steps": 2, "distillation": {}}]}
    student = tiny_vit(hidden=16, heads=2, ffn=32, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = PaKDTrainer(model=student, teacher_model=teacher, args=_args(tmp_path / "run"), train_dataset=data,
                          eval_dataset=data.select(range(8)), recipe=recipe)
    batches = []
    handle = teacher.register_forward_hook(
        lambda m, a, kw, out: batches.append((trainer.state.global_step, kw["pixel_values"].detach().clone())), with_kwargs=True)
    trainer.train()
    handle.remove()
    read = []
    handle = student.register_forward_hook(lambda m, a, kw, out: read.append(kw["pixel_values"]), with_kwargs=True)
    trainer.evaluate()
    handle.remove()
    assert len(read) == 1 and torch.equal(read[0], data[:8]["pixel_values"])
    assert [step for step, _ in batches] == [0, 1, 2, 3, 4]
    for step, pixels in batches:
        unchanged = sum(tuple(r.flatten().tolist()) in rows for r in pixels)
        if step < 3:  # blended: an example keeps its own pixels only when the draw pairs it with itself
            assert unchanged <= 2, (step, unchanged)
        else:
            assert unchanged == len(pixels), (step, unchanged)
    logged = [h for h in trainer.state.log_history if "kd_logits" in h]
    assert len(logged) == 5 and all(h["task"] > 0 and h["kd_logits"] > 0 for h in logged)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_models_and_tasks_whose_labels_cannot_be_blended_are_refused(tmp_path):
    from pakd_hf import PaKDTrainer

    mix = {"name": "m", "task": "image-classification", "stages": [{"name": "s", "steps": 1, "distillation": {"mixup": 0.4}}]}
    with pytest.raises(RecipeError, match=r"stages\[0\]\.distillation\.mixup.*regression"):
        PaKDTrainer(model=tiny_vit(seed=1, num_labels=1), teacher_model=tiny_vit(seed=0, num_labels=1),
                    args=_args(tmp_path / "a"), train_dataset=toy_images(8), recipe=mix)
    with pytest.raises(RecipeError, match=r"stages\[0\]\.distillation\.mixup.*compute_loss_func"):
        PaKDTrainer(model=tiny_vit(seed=1), teacher_model=tiny_vit(seed=0), args=_args(tmp_path / "b"),
                    train_dataset=toy_images(8), recipe=mix, compute_loss_func=lambda outputs, labels, **kw: outputs.logits.sum())
    text = {**mix, "task": "text-classification"}
    with pytest.raises(RecipeError, match=r"stages\[0\]\.distillation\.mixup.*'augment' makes a transfer set"):
        PaKDTrainer(model=tiny_bert(seed=1), teacher_model=tiny_bert(seed=0), args=_args(tmp_path / "c"), recipe=text)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("value, fragment", [(-0.1, "must be in (0, 100]"), (0, "must be in (0, 100]"),
                                             (101, "must be in (0, 100]"), (float("nan"), "must be a finite number"),
                                             ("yes", "must be a number")])
def test_recipe_errors_name_the_field(value, fragment):
    raw = {"name": "m", "task": "audio-classification",
           "stages": [{"name": "a", "steps": 1}, {"name": "b", "steps": 1, "distillation": {"mixup": value}}]}
    with pytest.raises(RecipeError) as err:
        load_recipe(raw)
    assert err.value.field == "stages[1].distillation.mixup" and fragment in str(err.value)


def test_the_recipe_round_trips_mixup_and_a_recipe_without_it_keeps_its_fingerprint():
    raw = {"name": "m", "task": "audio-classification", "stages": [{"name": "a", "steps": 1, "distillation": {"mixup": 0.4}}]}
    recipe = load_recipe(raw)
    assert recipe.stages[0].distillation.mixup == 0.4
    assert load_recipe(recipe.to_dict()) == recipe
    off = load_recipe({**raw, "stages": [{"name": "a", "steps": 1, "distillation": {}}]})
    assert off.stages[0].distillation.mixup is None
    assert "mixup" not in off.to_dict()["stages"][0]["distillation"]  # earlier recipes' keys and checkpoints stand
    assert off.fingerprint() != recipe.fingerprint()
