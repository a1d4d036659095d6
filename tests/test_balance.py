"""Weighted draws of the training examples (``PaKDTrainer(train_sample_weights=...)``, the recipe's
``training.balance_by``): the weights, the sampler's seed, what a trainer trains on, a resumed
run, and the refusals."""

from collections import Counter

import pytest
import torch

from pakd_hf.recipe import RecipeError, load_recipe
from pakd_hf.sampling import EpochWeightedSampler, balanced_weights, check_sample_weights
from toy import tiny_bert, toy_dataset

RARE = 8  # the first RARE rows of the toy set are one group, the other 56 another


def test_balanced_weights_give_every_value_the_same_share():
    values = ["a"] * 6 + ["b"] * 2 + ["c"]
    weights = balanced_weights(values)
    shares = Counter()
    for v, w in zip(values, weights):
        shares[v] += w
    assert shares == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": pytest.approx(1.0)}


def test_an_epochs_draw_depends_on_the_seed_and_the_epoch_alone():
    weights = torch.tensor(balanced_weights(["a"] * 900 + ["b"] * 100), dtype=torch.float64)
    sampler = EpochWeightedSampler(weights, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 1000  # an epoch keeps its length
    assert list(sampler) == first  # iterated again, the same epoch draws the same
    assert list(EpochWeightedSampler(weights, seed=3)) == first  # a fresh sampler (a resumed run, another process)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(EpochWeightedSampler(weights, seed=4)) != first
    rare = sum(i >= 900 for i in first + second) / 2000
    assert 0.45 < rare < 0.55  # half of the draws from the tenth of the rows that is group b


def _args(folder, **kw):
    from pakd_hf import PaKDTrainingArguments

    kw = {"save_strategy": "no", **kw}
    return PaKDTrainingArguments(output_dir=str(folder), per_device_train_batch_size=8, report_to=[], use_cpu=True,
                                 disable_tqdm=True, logging_steps=1, **kw)


RECIPE = {"name": "b", "task": "text-classification",
          "stages": [{"name": "distil", "epochs": 3, "learning_rate": 1e-3, "distillation": {"alpha": 0.5}}]}


def _train(folder, data, weights, resume=None, **kw):
    """Train a tiny BERT (distilling a fixed teacher) and return {step: [row indices of its batch]}."""
    from pakd_hf import PaKDTrainer

    row_of = {tuple(r): i for i, r in enumerate(data["input_ids"])}
    assert len(row_of) == len(data)
    trainer = PaKDTrainer(model=tiny_bert(seed=1), teacher_model=tiny_bert(seed=0), args=_args(folder, **kw),
                          train_dataset=data, recipe=RECIPE, train_sample_weights=weights)
    seen = {}

    def record(module, args, kwargs, output):
        if module.training:
            seen.setdefault(trainer.state.global_step, [row_of[tuple(r)] for r in kwargs["input_ids"].tolist()])

    trainer.model.register_forward_hook(record, with_kwargs=True)
    trainer.train(resume_from_checkpoint=resume)
    return seen


def test_a_trainer_draws_each_group_equally_often_and_keeps_the_epoch_length(tmp_path):
    data = toy_dataset(64)
    groups = ["rare"] * RARE + ["common"] * (64 - RARE)
    plain = _train(tmp_path / "plain", data, None)
    weighted = _train(tmp_path / "weighted", data, balanced_weights(groups))
    assert sorted(plain) == sorted(weighted) == list(range(24))  # 3 epochs of 8 batches of 8: the same steps
    drawn = [i for batch in weighted.values() for i in batch]
    assert len(drawn) == 3 * 64
    assert 0.35 < sum(i < RARE for i in drawn) / len(drawn) < 0.65  # about half, from an eighth of the rows
    uniform = [i for batch in plain.values() for i in batch]
    assert sorted(uniform) == sorted(list(range(64)) * 3)  # Trainer's shuffle: every row once an epoch
    epochs = [sorted(i for s in range(e * 8, e * 8 + 8) for i in weighted[s]) for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # each epoch its own draw
    assert _train(tmp_path / "again", data, balanced_weights(groups)) == weighted  # a seed repeats the run's draws
    other = _train(tmp_path / "data-seed", data, balanced_weights(groups), data_seed=7)
    assert other != weighted


def test_a_run_resumed_mid_epoch_draws_what_the_uninterrupted_run_drew(tmp_path):
    data = toy_dataset(64)
    weights = balanced_weights(["rare"] * RARE + ["common"] * (64 - RARE))
    whole = _train(tmp_path / "whole", data, weights)
    _train(tmp_path / "cut", data, weights, save_strategy="steps", save_steps=13)
    resumed = _train(tmp_path / "cut", data, weights, resume=str(tmp_path / "cut" / "checkpoint-13"),
                     save_strategy="steps", save_steps=13)
    assert sorted(resumed) == list(range(13, 24))  # from step 13, in the middle of the second epoch
    assert resumed == {s: whole[s] for s in range(13, 24)}


@pytest.mark.parametrize("weights, kw, fragment", [
    ([1.0] * 63, {}, "63 weights for 64 training examples"),
    ([1.0] * 63 + [-1.0], {}, "weight 63 is -1.0: every weight must be finite and >= 0"),
    ([float("nan")] + [1.0] * 63, {}, "weight 0 is nan"),
    ([0.0] * 64, {}, "every weight is 0"),
    (["x"] * 64, {}, "must be a sequence of numbers"),
    ([1.0] * 64, {"train_sampling_strategy": "group_by_length"}, "train_sampling_strategy is 'group_by_length'"),
])
def test_weights_that_cannot_be_drawn_are_refused_before_any_output(tmp_path, weights, kw, fragment):
    from pakd_hf import PaKDTrainer

    with pytest.raises(ValueError, match="train_sample_weights: ") as err:
        PaKDTrainer(model=tiny_bert(seed=1), teacher_model=tiny_bert(seed=0), args=_args(tmp_path / "run", **kw),
                    train_dataset=toy_dataset(64), recipe=RECIPE, train_sample_weights=weights)
    assert fragment in str(err.value)
    assert not (tmp_path / "run").exists()


def test_weights_without_a_sized_training_set_are_refused(tmp_path):
    from pakd_hf import PaKDTrainer

    with pytest.raises(ValueError, match="no train_dataset to weigh"):
        PaKDTrainer(model=tiny_bert(seed=1), args=_args(tmp_path / "a"), train_sample_weights=[1.0])
    stream = toy_dataset(8).to_iterable_dataset()
    with pytest.raises(ValueError, match="has no length"):
        PaKDTrainer(model=tiny_bert(seed=1), args=_args(tmp_path / "b", max_steps=1), train_dataset=stream,
                    train_sample_weights=[1.0] * 8)
    with pytest.raises(ValueError, match="at most"):
        check_sample_weights(torch.ones(1), 2**24 + 1)


SPEECH = {"name": "s", "task": "audio-classification", "data": {"dataset": "speech-keywords"},
          "stages": [{"name": "a", "steps": 1, "distillation": {}}]}


def test_the_recipe_field_is_checked_and_kept_out_of_the_teachers_key():
    recipe = load_recipe({**SPEECH, "training": {"balance_by": "voice"}})
    assert recipe.training.balance_by == "voice"
    assert load_recipe(recipe.to_dict()) == recipe
    plain = load_recipe({**SPEECH, "training": {}})
    assert "balance_by" not in plain.to_dict()["training"]  # unset: every earlier recipe keeps its fingerprint
    assert plain.fingerprint() != recipe.fingerprint()  # set: the student's runs and checkpoints are others
    assert repr(plain.training) == repr(recipe.training)  # the teacher's cache key reads the repr: the same teacher
    for training, fragment in [({"balance_by": " "}, "must name a column"),
                               ({"balance_by": "voice", "group_by_length": True}, "set one of them")]:
        with pytest.raises(RecipeError) as err:
            load_recipe({**SPEECH, "training": training})
        assert err.value.field == "training.balance_by" and fragment in str(err.value)
    text = {"name": "t", "task": "text-classification", "augment": {"copies": 1}, "training": {"balance_by": "label"},
            "stages": [{"name": "a", "steps": 1, "distillation": {}}]}
    with pytest.raises(RecipeError, match=r"training\.balance_by.*transfer set made by 'augment'"):
        load_recipe(text)
    lm = {"name": "l", "task": "text-generation", "training": {"balance_by": "source"},
          "stages": [{"name": "a", "steps": 1, "distillation": {"loss": "kl"}}]}
    with pytest.raises(RecipeError, match=r"training\.balance_by.*blocks of tokens"):
        load_recipe(lm)


def test_a_column_the_training_split_lacks_is_named_with_the_columns_it_has():
    from pakd_hf.pipeline.compress import load_data

    recipe = load_recipe({"name": "t", "task": "text-classification", "data": {"dataset": "rotten-tomatoes"},
                          "training": {"balance_by": "source"}, "stages": [{"name": "a", "steps": 1}]})
    with pytest.raises(RecipeError) as err:
        load_data(recipe, quick=True)
    assert err.value.field == "training.balance_by" and "no column 'source' (it has text, label)" in str(err.value)



def test_a_column_that_does_not_group_the_rows_is_refused():
    from datasets import Dataset

    from pakd_hf.pipeline.compress import check_balance_column

    rows = Dataset.from_dict({"engine": ["a", "a", "b", "c"], "one": ["x"] * 4, "id": ["0", "1", "2", "3"],
                              "audio": [[0.0, 1.0]] * 4})
    check_balance_column(rows, "engine")
    for column, fragment in [("one", "has one value"), ("id", "a different value in every row"),
                             ("audio", "holds List values"), ("nope", "no column 'nope'")]:
        with pytest.raises(RecipeError) as err:
            check_balance_column(rows, column)
        assert err.value.field == "training.balance_by" and fragment in str(err.value), str(err.value)


def test_a_sampling_flag_that_fights_balance_by_is_refused_before_any_work(tmp_path):
    import subprocess
    import sys

    import yaml

    from toy import with_repo_on_path

    recipe = {"name": "t", "task": "text-classification", "data": {"dataset": "rotten-tomatoes"},
              "teacher": {"model": "all-minilm-l6-v2"}, "training": {"balance_by": "label"},
              "stages": [{"name": "a", "steps": 1, "distillation": {}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run([sys.executable, "-m", "pakd_hf.cli", "compress", str(path), "--output-dir", str(tmp_path / "out"),
                           "--train_sampling_strategy", "group_by_length"], capture_output=True, text=True,
                          env=with_repo_on_path(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "training.balance_by" in proc.stderr and "--train_sampling_strategy group_by_length" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
