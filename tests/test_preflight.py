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
