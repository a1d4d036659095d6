"""Recipe validation: strict, one clear error naming the field."""

from pathlib import Path

import pytest
import yaml

from pakd_hf import Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "recipes" / "examples" / "tiny-bert-two-stage.yaml"


def base():
    return {
        "name": "r",
        "task": "text-classification",
        "stages": [
            {"name": "a", "steps": 4, "distillation": {"temperature": 2.0, "alpha": 0.5}},
            {"name": "b", "epochs": 1, "learning_rate": "5e-5"},
        ],
    }


def test_every_shipped_recipe_validates():
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        assert isinstance(load_recipe(path), Recipe), path


def test_round_trip_and_fingerprint(tmp_path):
    recipe = load_recipe(base())
    assert recipe.stages[1].learning_rate == 5e-5  # YAML 1.1's "5e-5" string is read as a number
    assert recipe.modality == "text"
    saved = recipe.save(tmp_path)
    assert saved.name == "pakd_recipe.yaml"
    again = load_recipe(saved)
    assert again == recipe and again.fingerprint() == recipe.fingerprint()
    other = base()
    other["stages"][0]["steps"] = 5
    assert load_recipe(other).fingerprint() != recipe.fingerprint()


def _error(mutate) -> RecipeError:
    raw = base()
    mutate(raw)
    with pytest.raises(RecipeError) as info:
        load_recipe(raw)
    message = str(info.value)
    assert "\n" not in message
    return info.value


@pytest.mark.parametrize(
    "mutate, field, fragment",
    [
        (lambda r: r.update(stagse=[]), "stagse", "did you mean 'stages'"),
        (lambda r: r["stages"][0]["distillation"].update(temprature=2), "stages[0].distillation.temprature", "did you mean 'temperature'"),
        (lambda r: r["stages"][0]["distillation"].update(temperature=0), "stages[0].distillation.temperature", "must be > 0"),
        (lambda r: r["stages"][0]["distillation"].update(temperature=-1.5), "stages[0].distillation.temperature", "must be > 0"),
        (lambda r: r["stages"][0]["distillation"].update(alpha=1.5), "stages[0].distillation.alpha", "[0, 1]"),
        (lambda r: r["stages"][0]["distillation"].update(alpha="high"), "stages[0].distillation.alpha", "must be a number"),
        (lambda r: r.update(stages=[]), "stages", "at least one stage"),
        (lambda r: r.update(task="text-clasification"), "task", "did you mean 'text-classification'"),
        (lambda r: r.update(modality="audio"), "modality", "is text"),
        (lambda r: r["stages"][0].update(epochs=1), "stages[0]", "exactly one duration"),
        (lambda r: r["stages"][1].pop("epochs"), "stages[1]", "exactly one duration"),
        # a key written as null, where a check across the mapping's keys fails: the null key is named
        (lambda r: r["stages"][1].update(epochs=None), "stages[1].epochs", "exactly one duration"),
        (lambda r: r["stages"][0].update(pruning={"heads": {"keep": None}}), "stages[0].pruning.heads.keep", "exactly one of 'keep'"),
        (lambda r: r["stages"][0].update(pruning={"ffn": {"keep_fraction": None}}), "stages[0].pruning.ffn.keep_fraction", "exactly one of 'keep'"),
        (lambda r: r["stages"][0].update(pruning={"heads": None}), "stages[0].pruning.heads", "prunes nothing"),
        # ... and a null the failing check does not ask for leaves the mapping named
        (lambda r: r["stages"][1].update(steps=3, warmup_ratio=None), "stages[1]", "exactly one duration"),
        (lambda r: r["stages"][1].update(learning_rate=None, epochs=None), "stages[1].epochs", "exactly one duration"),
        (lambda r: r["stages"][0].update(steps=2.5), "stages[0].steps", "must be an integer"),
        (lambda r: r["stages"][0].update(steps=True), "stages[0].steps", "must be an integer"),
        (lambda r: r["stages"][1].update(name="a"), "stages[1].name", "unique"),
        (lambda r: r["stages"][0].pop("name"), "stages[0].name", "is required"),
        (lambda r: r["stages"][0]["distillation"].update(hidden={"layer_map": [[0, 1, 2]]}), "stages[0].distillation.hidden.layer_map[0]", "pair"),
        (lambda r: r["stages"][0]["distillation"].update(hidden={"layer_map": [[-1, 1]]}), "stages[0].distillation.hidden.layer_map[0]", ">= 0"),
        (lambda r: r["stages"][0]["distillation"].update(hidden={"loss": "l1"}), "stages[0].distillation.hidden.loss", "one of 'mse', 'cosine'"),
        (lambda r: r["stages"][0]["distillation"].update(logits=False), "stages[0].distillation", "enables no loss"),
        (lambda r: r["stages"][0].update(warmup_ratio=1.0), "stages[0].warmup_ratio", "[0, 1)"),
        (lambda r: r.update(stages={"name": "a"}), "stages", "must be a list"),
        (lambda r: r.update(teacher={"model": "m", "config": {"model_type": "vit"}}), "teacher.model", "exactly one of"),
        (lambda r: r.update(teacher={"license": "mit"}), "teacher.model", "exactly one of"),
        (lambda r: r.update(teacher={"config": {"hidden_size": 8}, "fine_tune": {}}), "teacher.config.model_type", "is required"),
        (lambda r: r.update(teacher={"config": {"model_type": "vit"}}), "teacher.fine_tune", "must be trained"),
        (lambda r: r.update(teacher={"config": ["vit"], "fine_tune": {}}), "teacher.config", "mapping of names"),
        (lambda r: r.update(teacher={"model": "m", "processor": {}}), "teacher.processor", "built from 'config'"),
        (lambda r: r.update(data={"dataset": "speech-keywords", "options": 3}), "data.options", "mapping of names"),
        (lambda r: r.update(data={"dataset": "speech-keywords", "max_seconds": 0}), "data.max_seconds", "must be > 0"),
        # Upper bounds: values past them hang a run, fill memory or overflow a library later.
        (lambda r: r["stages"][1].update(epochs=1e30), "stages[1].epochs", "must be <= 10,000"),
        (lambda r: r["stages"][0].update(steps=10**12), "stages[0].steps", "must be <= 100,000,000"),
        (lambda r: r["stages"][0].update(learning_rate=1e30), "stages[0].learning_rate", "must be <= 10"),
        (lambda r: r["stages"][0].update(weight_decay=1e30), "stages[0].weight_decay", "must be <= 10"),
        (lambda r: r["stages"][0]["distillation"].update(temperature=1e9), "stages[0].distillation.temperature", "<= 1,000"),
        (lambda r: r["stages"][0]["distillation"].update(hidden={"weight": 1e30}), "stages[0].distillation.hidden.weight", "<= 1e+06"),
        (lambda r: r.update(seed=2**32), "seed", "2**32 - 1"),
        (lambda r: r.update(training={"seed": -1}), "training.seed", "2**32 - 1"),
        (lambda r: r.update(training={"batch_size": 10**9}), "training.batch_size", "<= 65,536"),
        (lambda r: r.update(augment={"copies": 10**9}), "augment.copies", "<= 1,000"),
        (lambda r: r.update(data={"dataset": "speech-keywords", "max_seconds": 1e9}), "data.max_seconds", "<= 600"),
        (lambda r: r.update(data={"dataset": "rotten-tomatoes", "max_length": 10**12}), "data.max_length", "<= 1,048,576"),
        (lambda r: r.update(teacher={"model": "m", "fine_tune": {"epochs": 1e30}}), "teacher.fine_tune.epochs", "<= 10,000"),
        (lambda r: r.update(teacher={"model": "m", "fine_tune": {"weight_decay": -1}}), "teacher.fine_tune.weight_decay", ">= 0"),
    ],
)
def test_bad_recipes_name_the_field(mutate, field, fragment):
    err = _error(mutate)
    assert err.field == field
    assert fragment in str(err)
    assert f"'{field}'" in str(err)


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(RecipeError, match="is empty"):
        load_recipe(empty)


def test_example_recipe_content():
    recipe = load_recipe(EXAMPLE)
    assert [s.name for s in recipe.stages] == ["logits", "deep"]
    assert recipe.stages[1].distillation.hidden.layer_map == "auto"
    assert yaml.safe_load(recipe.to_yaml())["name"] == "tiny-bert-two-stage"


def test_a_held_out_test_split_is_required_and_is_not_the_validation_split():
    from pakd_hf.recipe import RecipeError, load_recipe

    base = {"name": "x", "task": "text-classification", "stages": [{"name": "s", "steps": 1}],
            "data": {"dataset": "some/hub-set"}}
    for data, fragment in (({"test_split": None}, "is required"), ({"test_split": "validation"}, "also the validation split")):
        with pytest.raises(RecipeError, match=fragment) as info:
            load_recipe({**base, "data": {**base["data"], **data}})
        assert "data.test_split" in str(info.value)
    assert load_recipe({**base, "data": {**base["data"], "validation_split": None, "test_split": "validation"}})


def test_training_blocks_take_training_arguments_names_for_the_same_fields():
    raw = base()
    raw["training"] = {"per_device_train_batch_size": 16, "per_device_eval_batch_size": 64, "logging_steps": 5}
    raw["teacher"] = {"model": "m", "fine_tune": {"num_train_epochs": 2, "per_device_train_batch_size": 8}}
    recipe = load_recipe(raw)
    assert (recipe.training.batch_size, recipe.training.eval_batch_size) == (16, 64)
    assert (recipe.teacher.fine_tune.epochs, recipe.teacher.fine_tune.batch_size) == (2, 8)
    same = base()
    same["training"] = {"batch_size": 16, "eval_batch_size": 64, "logging_steps": 5}
    same["teacher"] = {"model": "m", "fine_tune": {"epochs": 2, "batch_size": 8}}
    assert load_recipe(same).to_dict() == recipe.to_dict() and load_recipe(same).fingerprint() == recipe.fingerprint()
    for block, problem, field, fragment in (
        ({"per_device_train_batch_size": 16, "batch_size": 8}, "both", "training.batch_size",
         "'per_device_train_batch_size' and 'batch_size' are the same field"),
        ({"per_device_train_batch_size": 0}, "range", "training.per_device_train_batch_size", "must be >= 1"),
        ({"per_device_eval_batch_size": "x"}, "type", "training.per_device_eval_batch_size", "must be an integer"),
        ({"per_device_train_batch_sze": 4}, "spelling", "training.per_device_train_batch_sze",
         "did you mean 'per_device_train_batch_size'"),
    ):
        raw = base()
        raw["training"] = block
        with pytest.raises(RecipeError) as info:
            load_recipe(raw)
        assert info.value.field == field and fragment in str(info.value), (problem, str(info.value))
