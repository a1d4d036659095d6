"""What a recipe names is checked before any work: data set, teacher, layer maps per stage."""

from pathlib import Path

import pytest

from pakd_hf.cli import main
from pakd_hf.pipeline.preflight import preflight
from pakd_hf.recipe import RecipeError, load_recipe, stage_layer_counts

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml"


def _recipe(**changes):
    raw = load_recipe(MAIN).to_dict()
    for path, value in changes.items():
        node = raw
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
    return load_recipe(raw)


def test_a_later_stages_layer_map_is_checked_against_the_layers_earlier_stages_leave(tmp_path, capsys):
    # Stage 0 keeps 3 of MiniLM's 6 layers; stage 2 maps student layer 5, which no longer exists.
    recipe = _recipe(**{"stages.2.distillation.hidden": {"layer_map": [[0, 0], [5, 6]]}})
    assert stage_layer_counts(recipe, 6) == [6, 3, 3]
    with pytest.raises(RecipeError, match=r"stages\[2\]\.distillation\.hidden\.layer_map\[1\].*student index 5"):
        preflight(recipe)
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    assert main(["validate", str(path)]) == 2
    assert main(["compress", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("student index 5") == 2 and not (tmp_path / "out").exists()
    # The same map in the first stage (6 layers) fits.
    preflight(_recipe(**{"stages.0.distillation.hidden": {"layer_map": [[0, 0], [5, 6]]}}))


@pytest.mark.parametrize("field, value, fragment", [
    ("data.dataset", "no-such/dataset", "'no-such/dataset' is not an offline data set"),
    ("teacher.model", "no-such/model", "'no-such/model' is not an offline model"),
])
def test_names_that_cannot_be_found_offline_are_refused_before_any_folder(tmp_path, capsys, field, value, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(_recipe(**{field: value}).to_yaml())
    assert main(["compress", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"'{field}'" in err and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    # `pakd validate` notes a Hub id it cannot check offline instead of refusing the recipe.
    assert main(["validate", str(path)]) == 0
    assert "is a Hub id: not checked offline" in capsys.readouterr().out


def test_a_local_teacher_folder_must_be_a_saved_model(tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    with pytest.raises(RecipeError, match="teacher.model.*has no config.json"):
        preflight(_recipe(**{"teacher.model": str(folder)}))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(RecipeError, match="cannot be read as JSON"):
        preflight(_recipe(**{"teacher.model": str(folder)}))


def test_layer_counts_follow_compaction_and_stop_at_a_layer_budget():
    def stages(*pruning):
        return load_recipe({"name": "x", "task": "text-classification",
                            "stages": [{"name": f"s{i}", "steps": 1, **({"pruning": p} if p else {})}
                                       for i, p in enumerate(pruning)]})

    # Masks wait for a compacting stage, which removes an earlier stage's pending layers too.
    assert stage_layer_counts(stages({"layers": {"keep": 2}, "compact": False}, {"heads": {"keep": 2}}, None), 4) == [4, 4, 2]
    assert stage_layer_counts(stages({"layers": {"keep_fraction": 0.5}}, {"layers": {"keep": 1}}, None), 6) == [6, 3, 1]
    # A budget may prune layers by an amount the recipe does not say: later counts are unknown.
    budget = {"budget": {"params": 0.5, "kinds": ["layers", "ffn"]}}
    assert stage_layer_counts(stages(budget, None), 4) == [4, None]


def test_hub_ids_are_checked_on_the_hub_when_online(hub_server, monkeypatch, tmp_path):
    import json

    from huggingface_hub import HfApi, constants

    from hub_server import patch_hub_endpoint

    token = "preflight-token"
    hub_server.add_user("pakd", token)
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, disable_xet=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    api = HfApi()
    api.create_repo("pakd/six-layers", token=token)
    config = {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384}
    api.upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json",
                    repo_id="pakd/six-layers", token=token)
    # Found: its config comes from the Hub, and gives the layer maps their layer count.
    assert preflight(_recipe(**{"teacher.model": "pakd/six-layers"})) == 6
    with pytest.raises(RecipeError, match=r"teacher.model.*'pakd/no-such-model' is not on the Hub"):
        preflight(_recipe(**{"teacher.model": "pakd/no-such-model"}))
    with pytest.raises(RecipeError, match=r"data.dataset.*'pakd/no-such-data' is not on the Hub"):
        preflight(_recipe(**{"data.dataset": "pakd/no-such-data"}))
    api.create_repo("pakd/no-config", token=token)
    with pytest.raises(RecipeError, match="has no config.json"):
        preflight(_recipe(**{"teacher.model": "pakd/no-config"}))


VIT = ROOT / "recipes" / "vision" / "fashion-mnist-vit.yaml"
SPEECH = ROOT / "recipes" / "speech" / "commands-whisper-tiny.yaml"


def _changed(source: Path, path: str, value):
    raw = load_recipe(source).to_dict()
    node = raw
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last)
    else:
        node[last] = value
    return load_recipe(raw)


@pytest.mark.parametrize("source, path, value, field, fragment", [
    # a from-scratch teacher: sizes that no model has, or that would never finish building
    (VIT, "teacher.config.hidden_size", -1, "teacher.config.hidden_size", "whole number in [1, 1,048,576]"),
    (VIT, "teacher.config.num_hidden_layers", 10**30, "teacher.config.num_hidden_layers", "[1, 1,024]"),
    (VIT, "teacher.config.image_size", 100_000, "teacher.config.image_size", "[1, 2,048]"),
    (VIT, "teacher.config.hidden_dropout_prob", 2, "teacher.config.hidden_dropout_prob", "probability"),
    (VIT, "teacher.config.hiden_size", 64, "teacher.config.hiden_size", "no such field"),
    (VIT, "teacher.config.hidden_size", 1_000_000, "teacher.config", "more than the 2,000,000,000"),
    (VIT, "teacher.config.patch_size", 56, "teacher.config", "cannot run"),  # a patch larger than the image
    (VIT, "teacher.processor", {"size": {"height": 10**9, "width": 8}}, "teacher.processor.size.height", "[1, 2,048]"),
    (VIT, "teacher.processor", {"image_mean": [0.5, 0.5]}, "teacher.processor", "cannot process"),  # 3 channels
    # an offline loader's options: unknown, wrong type, out of range (the synthesis would never end)
    (SPEECH, "data.options.clip_per_voice", 2, "data.options.clip_per_voice", "takes clips_per_voice"),
    (SPEECH, "data.options.clips_per_voice", 10**30, "data.options.clips_per_voice", "[1, 100]"),
    (SPEECH, "data.options.clips_per_voice", 1.5, "data.options.clips_per_voice", "an integer"),
    (SPEECH, "data.options.workers", True, "data.options.workers", "an integer"),
    (MAIN, "data.options", {"seed": 3}, "data.options.seed", "takes none"),
    (SPEECH, "data.options.voices_per_variant", "all", "data.options.voices_per_variant", "an integer"),
    # options beside a data set that is not an offline one: the data set is named (a slip, or a Hub id)
    (SPEECH, "data.dataset", "speech-comands-synth", "data.dataset", "did you mean 'speech-commands-synth'"),
    (SPEECH, "data.dataset", "abc", "data.dataset", "remove the options to load it with datasets.load_dataset"),
])
def test_what_a_recipe_builds_is_checked_before_any_work(tmp_path, capsys, source, path, value, field, fragment):
    recipe = _changed(source, path, value)
    with pytest.raises(RecipeError) as info:
        preflight(recipe)
    assert info.value.field == field and fragment in str(info.value), str(info.value)
    file = tmp_path / "r.yaml"
    file.write_text(recipe.to_yaml())
    capsys.readouterr()
    assert main(["compress", str(file), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{field}'" in err[0] and not (tmp_path / "out").exists()


def test_speech_keyword_voices_are_known_ones_and_null_is_the_default(tmp_path):
    keywords = ROOT / "recipes" / "speech" / "keywords-whisper-tiny.yaml"
    for options, field, fragment in (({"voices": ["en-us+m1", "../../etc", "en-gb+m1"]}, "data.options.voices", "'../../etc'"),
                                     ({"voices": ["en-us+m1"] * 3}, "data.options.voices", "distinct"),
                                     ({"voices": ["en-us+m1", "en-us+m2", "en-us+m3"], "num_voices": 5},
                                      "data.options.num_voices", "at most that")):
        with pytest.raises(RecipeError) as info:
            preflight(_changed(keywords, "data.options", options), build=False)
        assert info.value.field == field and fragment in str(info.value), str(info.value)
    from pakd_hf.pipeline.preflight import _check_options

    _check_options("speech-keywords", {"num_voices": None, "voices": None, "cache_dir": None, "clips_per_voice": 2})
    _check_options("speech-commands-synth", {"voices_per_variant": None})
    from pakd_hf.pipeline.tasks import _check_config_values

    _check_config_values({"head_dim": None, "classifier_dropout": None, "tie_word_embeddings": True})  # as in config.json


def test_the_option_tables_match_the_loaders():
    """Every option a loader takes is in OPTIONS (and nothing else): a new keyword is checked too."""
    import inspect

    from pakd_hf.pipeline.data import DATASETS, OPTIONS, rotten_tomatoes
    from pakd_hf.pipeline.data import fashion_mnist, speech_commands, speech_keywords

    loaders = {"rotten-tomatoes": rotten_tomatoes.load_rotten_tomatoes,
               "rotten-tomatoes-text": rotten_tomatoes.load_rotten_tomatoes_text,
               "fashion-mnist": fashion_mnist.load_fashion_mnist, "speech-keywords": speech_keywords.load_speech_keywords,
               "speech-commands-synth": speech_commands.load_speech_commands}
    assert set(loaders) == set(DATASETS) == set(OPTIONS)
    for name, loader in loaders.items():
        taken = set(inspect.signature(loader).parameters) - {"seed"}  # the seed is data.seed
        assert set(OPTIONS[name]) == taken, name
