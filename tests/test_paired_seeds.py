"""benchmarks/paired_seeds.py on the runs of record: pairs by seed, one teacher only."""

import importlib.util
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("paired_seeds", ROOT / "benchmarks" / "paired_seeds.py")
paired_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired_seeds)


def test_differences_are_paired_by_seed_and_written_atomically(tmp_path, capsys):
    runs = ROOT / "results" / "ablation-nlp3" / "runs"
    out = tmp_path / "cmp" / "comparison.json"
    assert paired_seeds.main([f"pakd={runs}/pakd-seed-*.json", f"poke={runs}/prune-once-kd-seed-*.json",
                              f"kd={runs}/kd@5-seed-*.json", "--diff", "pakd - poke", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["seeds_in_common"] == [0, 1, 2] and not list(out.parent.glob(".*"))
    a = {json.loads(p.read_text())["seed"]: json.loads(p.read_text()) for p in runs.glob("pakd-seed-*.json")}
    b = {json.loads(p.read_text())["seed"]: json.loads(p.read_text()) for p in runs.glob("prune-once-kd-seed-*.json")}
    d = [a[s]["accuracy_validation"] - b[s]["accuracy_validation"] for s in sorted(a)]
    diff = got["differences"]["pakd - poke"]
    assert diff["seeds"] == sorted(a) and len(d) == 9  # the two arms share nine seeds, beyond kd's three
    assert abs(diff["validation"]["mean"] - statistics.fmean(d)) < 1e-12
    assert abs(diff["validation"]["sd"] - statistics.stdev(d)) < 1e-12
    assert diff["validation"]["a_ahead"] == sum(x > 0 for x in d)
    assert got["groups"]["kd"]["validation"]["n"] == 3
    assert "pakd - poke (validation, seeds [0, 1, 2, 3, 4, 5, 6, 7, 8])" in capsys.readouterr().out


def test_runs_of_two_teachers_or_no_runs_are_refused_in_one_line(tmp_path, capsys):
    nlp2, nlp3 = ROOT / "results" / "ablation-nlp2" / "runs", ROOT / "results" / "ablation-nlp3" / "runs"
    assert paired_seeds.main([f"a={nlp2}/pakd-seed-*.json", f"b={nlp3}/pakd-seed-*.json"]) == 2
    assert paired_seeds.main([f"a={tmp_path}/none-*.json"]) == 2
    assert paired_seeds.main([f"a={nlp3}/pakd-seed-*.json", "--diff", "a - c"]) == 2
    err = capsys.readouterr().err
    assert "2 teachers" in err and "no report matches" in err and "--diff 'a - c'" in err
    assert len(err.strip().splitlines()) == 3


def test_whole_recipes_of_two_teachers_compare_unpaired(tmp_path, capsys):
    """--unpaired: the difference of the means and Welch's standard error, on the speech runs of
    record whose teachers differ (the frequency warp is in the teacher's key)."""
    mixup = ROOT / "results" / "speech-speakers" / "engine" / "mixup" / "runs"
    warp = ROOT / "results" / "speech-ranking" / "engine" / "vtlp" / "runs"
    groups = [f"mixup={mixup}/pakd-seed-*.json", f"warp={warp}/pakd-seed-*.json", "--diff", "warp - mixup"]
    assert paired_seeds.main(groups) == 2  # paired, two teachers are refused
    out = tmp_path / "cmp.json"
    assert paired_seeds.main(["--unpaired", *groups, "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    acc = {name: [json.loads(p.read_text())["accuracy_validation"] for p in folder.glob("*.json")]
           for name, folder in (("mixup", mixup), ("warp", warp))}
    diff = got["differences"]["warp - mixup"]["validation"]
    assert abs(diff["mean"] - (statistics.fmean(acc["warp"]) - statistics.fmean(acc["mixup"]))) < 1e-12
    se = (statistics.variance(acc["warp"]) / 3 + statistics.variance(acc["mixup"]) / 3) ** 0.5
    assert abs(diff["se"] - se) < 1e-12 and diff["n_a"] == diff["n_b"] == 3
    assert got["paired"] is False and len(got["teacher_weights"]) == 2
    assert got["groups"]["warp"]["teachers"] != got["groups"]["mixup"]["teachers"]
    assert "warp - mixup (validation, unpaired, n 3 and 3): +4.71 points, se 1.50" in capsys.readouterr().out
    one = paired_seeds.main(["--unpaired", f"a={warp}/pakd-seed-0.json", f"b={mixup}/pakd-seed-*.json", "--diff", "a - b"])
    assert one == 0 and "no se (one run in a group)" in capsys.readouterr().out


def test_the_ablation_claim_pairs_like_the_script_on_the_runs_of_record(tmp_path):
    """`pakd ablate`'s claim on the nine-seed NLP ablation: the sd of PaKD minus its best baseline is the
    paired one, the number this script gives, and ablation.md says so."""
    from pakd_hf.pipeline.ablate import summarise, write_outputs

    runs = [json.loads(p.read_text()) for p in sorted((ROOT / "results" / "ablation-nlp3" / "runs").glob("*.json"))]
    summary = summarise(runs, "r", "cmd", {"validation": 0.848, "test": 0.8415}, quick=False)
    claim = summary["claim"]
    by = {arm: {r["seed"]: r["accuracy_validation"] for r in runs if r["arm"] == arm}
          for arm in ("pakd", claim["best_other_arm"])}
    d = [by["pakd"][s] - by[claim["best_other_arm"]][s] for s in sorted(by["pakd"])]
    assert claim["best_other_arm"] == "prune-once-kd" and claim["sd_paired"] and claim["n_seeds"] == 9
    assert abs(claim["sd"] - statistics.stdev(d)) < 1e-12 and claim["pakd_ahead"] == sum(x > 0 for x in d)
    assert abs(claim["pakd_minus_best_validation"] - statistics.fmean(d)) < 1e-12
    assert claim["sd"] != claim["sd_unpaired"]
    write_outputs(tmp_path, summary)
    assert (f"sd of the difference {100 * claim['sd']:.2f} paired by seed, PaKD ahead on {claim['pakd_ahead']} of 9"
            in (tmp_path / "ablation.md").read_text())
