"""Mean, sd and worst seed of a recipe's student over runs made by `pakd compress` (OUT/report.json)
and `pakd ablate --arms pakd` (OUT/pakd/seed-N/report.json) against the same teacher.

    python benchmarks/seeds_summary.py runs/fmnist-r18/report.json runs/fmnist-r18-abl/pakd/seed-*/report.json \\
        --json results/fmnist-resnet18/seeds.json

Both commands train the same recipe from the same cached teacher, so their students are seeds of
one experiment; the teacher's weights digest in each report must agree (checked). The sd is the
sample standard deviation. Accuracy (higher is better) or perplexity (lower is better, "worst" is
then the highest).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _row(path: Path) -> dict:
    r = json.loads(path.read_text())
    if "arm" in r:  # pakd ablate
        metric = r.get("metric", "accuracy")
        return {"seed": r["seed"], "source": str(path), "metric": metric, "teacher_weights": r.get("teacher_weights"),
                "validation": r[f"{metric}_validation"], "test": r[f"{metric}_test"]}
    metric = "perplexity" if "perplexity_student" in r else "accuracy"  # pakd compress
    return {"seed": r["seed"], "source": str(path), "metric": metric, "teacher_weights": r.get("teacher_weights"),
            "validation": r[f"{metric}_student_validation"], "test": r[f"{metric}_student"],
            "teacher_validation": r[f"{metric}_teacher_validation"], "teacher_test": r[f"{metric}_teacher"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write the summary here too")
    args = parser.parse_args(argv)
    rows = sorted((_row(p) for p in args.reports), key=lambda r: r["seed"])
    if len({r["seed"] for r in rows}) != len(rows):
        sys.exit("two reports of the same seed")
    if len({r["metric"] for r in rows}) != 1 or len({r["teacher_weights"] for r in rows}) != 1:
        sys.exit("the reports do not share one metric and one teacher (teacher_weights differ)")
    metric, lower = rows[0]["metric"], rows[0]["metric"] == "perplexity"
    out: dict = {"metric": metric, "seeds": [r["seed"] for r in rows], "runs": rows}
    for split in ("validation", "test"):
        xs = [r[split] for r in rows]
        out[split] = {"mean": round(statistics.mean(xs), 5), "sd": round(statistics.stdev(xs), 5) if len(xs) > 1 else None,
                      "worst": max(xs) if lower else min(xs), "n": len(xs)}
    teacher = next((r for r in rows if "teacher_test" in r), None)
    if teacher is not None:
        out["teacher"] = {"validation": teacher["teacher_validation"], "test": teacher["teacher_test"]}
        out["kept_test_mean"] = round(out["test"]["mean"] / teacher["teacher_test"], 5)
    text = json.dumps(out, indent=2) + "\n"
    print(text, end="")
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
