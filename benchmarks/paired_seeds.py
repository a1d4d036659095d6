"""Two or more recipes or arms side by side, seed by seed, and their paired differences.

    python benchmarks/paired_seeds.py \\
        "long pakd=runs/nlp-long/pakd/seed-*/report.json" \\
        "main pakd=runs/nlp-main/pakd/seed-*/report.json" \\
        "long prune-once-kd=runs/nlp-long/prune-once-kd/seed-*/report.json" \\
        --diff "long pakd - main pakd" --diff "long pakd - long prune-once-kd" \\
        --json results/ablation-nlp-long-amd/comparison.json

Each group is NAME=GLOB over `pakd ablate` run reports (OUT/<arm>/seed-<n>/report.json, or the
copies kept under results/<folder>/runs/). Groups are compared on the seeds they share: a
difference is paired by seed (the same seed gives both runs the same data order and, for the
arms that start from the teacher, the same start), so its sd is that of the per-seed
differences, smaller than the two arms' spreads combined when the seeds move both alike. All
reports must have learned from one teacher (their `teacher_weights` agree: checked). Validation
is what a choice is made on; test is printed beside it and picks nothing. The sd is the sample
standard deviation; "worst" is the lowest accuracy (the highest perplexity).

Recipes whose teachers differ (a change to the data or its augmentation is in the teacher's key,
so each recipe fine-tunes its own) cannot be paired: `--unpaired` compares them as whole recipes
(teacher and students), a difference of the means with its standard error, the root of the
two groups' variances over their sizes (Welch's), and says whose teachers they are.

    python benchmarks/paired_seeds.py --unpaired \
        "mixup=results/speech-speakers/engine/mixup/runs/pakd-seed-*.json" \
        "warp=results/speech-ranking/engine/vtlp/runs/pakd-seed-*.json" --diff "warp - mixup"

`pakd ablate`'s own summary compares the arms of one recipe; this compares runs of several
recipes (e.g. a variant against the shipped recipe) trained against the same teacher, which is
why it is a script beside the library rather than part of it; the pairing itself is the
library's (`pakd_hf.pipeline.ablate.paired`), the one `pakd ablate`'s claim uses.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path

from pakd_hf.pipeline.ablate import paired, seed_stats


def _load(pattern: str) -> dict[int, dict]:
    runs = {}
    for path in sorted(glob.glob(pattern)):
        r = json.loads(Path(path).read_text())
        metric = r.get("metric", "accuracy")
        runs[int(r["seed"])] = {"validation": r[f"{metric}_validation"], "test": r[f"{metric}_test"],
                                "metric": metric, "teacher_weights": r.get("teacher_weights"), "source": path,
                                "commit": r.get("commit")}
    return runs


def _unpaired(a: list[float], b: list[float]) -> dict:
    """mean(a) - mean(b) and its standard error sqrt(var_a / n_a + var_b / n_b) (None below two runs a side)."""
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5 if min(len(a), len(b)) > 1 else None
    return {"mean": statistics.fmean(a) - statistics.fmean(b), "se": se, "n_a": len(a), "n_b": len(b)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="+", help="NAME=GLOB of run reports")
    ap.add_argument("--diff", action="append", default=[], help="'A - B': paired difference of two groups")
    ap.add_argument("--json", help="write the table and differences here")
    ap.add_argument("--unpaired", action="store_true",
                    help="groups of different teachers: differences of the means with their standard error")
    args = ap.parse_args(argv)
    groups: dict[str, dict[int, dict]] = {}
    for spec in args.groups:
        name, sep, pattern = spec.partition("=")
        if not sep or not name.strip():
            print(f"error: group {spec!r}: write NAME=GLOB", file=sys.stderr)
            return 2
        runs = _load(pattern)
        if not runs:
            print(f"error: group {name!r}: no report matches {pattern}", file=sys.stderr)
            return 2
        groups[name.strip()] = runs
    teachers = {r["teacher_weights"] for runs in groups.values() for r in runs.values()}
    metrics = {r["metric"] for runs in groups.values() for r in runs.values()}
    if (len(teachers) != 1 and not args.unpaired) or len(metrics) != 1:
        print(f"error: the runs learned from {len(teachers)} teachers ({sorted(map(str, teachers))}) or report "
              f"{len(metrics)} metrics: pair runs of one teacher and one metric (--unpaired compares whole "
              "recipes of different teachers)", file=sys.stderr)
        return 2
    metric = metrics.pop()
    lower = metric == "perplexity"
    seeds = sorted(set.intersection(*(set(runs) for runs in groups.values())))
    out = {"metric": metric, "teacher_weights": sorted(map(str, teachers)) if args.unpaired else teachers.pop(),
           "seeds_in_common": seeds, "groups": {}, "differences": {}, "paired": not args.unpaired}
    print(f"{metric}; seeds in common: {seeds}")
    for split in ("validation", "test"):
        print(f"\n{split}:\n| seed | " + " | ".join(groups) + " |\n|---|" + "---:|" * len(groups))
        for seed in sorted(set().union(*groups.values())):
            cells = [f"{groups[g][seed][split]:.4f}" if seed in groups[g] else "" for g in groups]
            print(f"| {seed} | " + " | ".join(cells) + " |")
        row = []
        for name, runs in groups.items():
            st = seed_stats([r[split] for r in runs.values()], higher_is_better=not lower)
            out["groups"].setdefault(name, {"seeds": sorted(runs), "commits": sorted({str(r["commit"])
                                                                                      for r in runs.values()}),
                                            "teachers": sorted({str(r["teacher_weights"]) for r in runs.values()})})
            out["groups"][name][split] = st
            row.append(f"{st['mean']:.4f} ± {st['sd']:.4f} (worst {st['worst']:.4f}, n={st['n']})")
        print("| all | " + " | ".join(row) + " |")
    for spec in args.diff:
        a, sep, b = (part.strip() for part in spec.partition(" - "))
        if not sep or a not in groups or b not in groups:
            print(f"error: --diff {spec!r}: write 'A - B' with two of {list(groups)}", file=sys.stderr)
            return 2
        common = sorted(set(groups[a]) & set(groups[b]))
        if args.unpaired:
            out["differences"][spec] = {"seeds": {a: sorted(groups[a]), b: sorted(groups[b])}}
            for split in ("validation", "test"):
                st = _unpaired([r[split] for r in groups[a].values()], [r[split] for r in groups[b].values()])
                out["differences"][spec][split] = st
                scale, unit = (100, " points") if metric == "accuracy" else (1, "")
                se = "no se (one run in a group)" if st["se"] is None else f"se {scale * st['se']:.2f}"
                print(f"{spec} ({split}, unpaired, n {st['n_a']} and {st['n_b']}): {scale * st['mean']:+.2f}{unit}, {se}")
            continue
        if not common:
            print(f"error: --diff {spec!r}: no seed in common", file=sys.stderr)
            return 2
        out["differences"][spec] = {"seeds": common}
        for split in ("validation", "test"):
            st = paired({s: r[split] for s, r in groups[a].items()}, {s: r[split] for s, r in groups[b].items()}, lower)
            ahead, d = st["a_ahead"], st["per_seed"]
            out["differences"][spec][split] = {k: st[k] for k in ("mean", "sd", "n", "a_ahead", "per_seed")}
            print(f"{spec} ({split}, seeds {common}): {100 * st['mean']:+.2f} points, sd {100 * st['sd']:.2f}, "
                  f"A ahead on {ahead} of {len(d)}" if metric == "accuracy" else
                  f"{spec} ({split}, seeds {common}): {st['mean']:+.3f}, sd {st['sd']:.3f}, A ahead on {ahead} of {len(d)}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
