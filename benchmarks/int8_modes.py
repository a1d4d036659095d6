"""Dynamic against static int8 for one `pakd compress` output: size, accuracy, ONNX Runtime speed.

    python benchmarks/int8_modes.py runs/fmnist-r18 recipes/vision/fashion-mnist-resnet18.yaml \\
        --json results/fmnist-resnet18/int8_modes.json

Exports OUT/student to ONNX three ways into OUT/int8-modes/ (fp32, dynamic int8, static int8
calibrated on ``--calibration`` seeded training examples) and OUT/teacher in fp32; scores the
three student files on validation (where the choice between the modes is made), then on test
(read once, at the end); and times all four files in ONNX Runtime with `pakd benchmark`'s
protocol (the same examples encoded outside the timing, interleaved rounds, medians, intra-op
threads fixed) in ``--processes`` rounds, keeping for each batch size the round with the median
static int8 latency (runs of record before this rule kept the batch-32 median round for both).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a `pakd compress` output folder (teacher/ and student/)")
    parser.add_argument("recipe", type=Path, help="the recipe that made it (its data: validation, test, calibration)")
    parser.add_argument("--calibration", type=int, default=256, help="training examples static int8 calibrates on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=3, help="timing rounds (the median is kept)")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)

    import torch

    from pakd_hf import load_recipe
    from pakd_hf.benchmark import hardware_description
    from pakd_hf.pipeline.compress import load_data
    from pakd_hf.pipeline.deploy import FP32_FILE, INT8_FILE, OrtModel, compare_onnx, export_onnx, training_examples
    from pakd_hf.pipeline.tasks import adapter_for

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    adapter = adapter_for(recipe)
    data = load_data(recipe, False)
    where = args.out / "int8-modes"
    began = time.perf_counter()
    exports = {
        "dynamic": export_onnx(args.out / "student", where / "dynamic", int8="dynamic", source="student"),
        "static": export_onnx(args.out / "student", where / "static", int8="static", source="student",
                              calibration=training_examples(recipe, args.calibration, data["train"])),
        "teacher": export_onnx(args.out / "teacher", where / "teacher", source="teacher"),
    }
    export_seconds = round(time.perf_counter() - began, 1)
    files = {"teacher": where / "teacher" / FP32_FILE, "student": where / "dynamic" / FP32_FILE,
             "dynamic": where / "dynamic" / INT8_FILE, "static": where / "static" / INT8_FILE}
    preprocessor = adapter.load_preprocessor(where / "dynamic")
    column, label = adapter.column(recipe.data), recipe.data.label_column

    def score(split) -> dict[str, float]:
        examples, gold = list(split[column]), list(split[label])
        return {name: round(adapter.accuracy(OrtModel(files[name], args.threads), preprocessor, examples, gold, recipe.data, 128), 5)
                for name in ("student", "dynamic", "static")}

    validation = score(data["validation"])
    print(f"validation accuracy: {validation}", file=sys.stderr)
    test = score(data["test"])  # the only read of the test split
    print(f"test accuracy: {test}", file=sys.stderr)

    examples = list(data["test"].select(range(32))[column])
    encoders = {name: (lambda idx, pre=adapter.load_preprocessor(path.parent): adapter.encode_batch(pre, [examples[i] for i in idx], recipe.data))
                for name, path in files.items()}
    rounds = [compare_onnx(files, encoders, threads=args.threads, examples=len(examples), repeats=20, min_seconds=2.0)
              for _ in range(args.processes)]
    # Per batch size, the round whose static int8 latency is the median (the teacher's figure from
    # the same round, so each ratio is one sitting's)
    chosen = {key: sorted(rounds, key=lambda r: r[f"latency_ms_{key}_static"])[(len(rounds) - 1) // 2]
              for key in ("b1", "b32")}
    latency = {key: {name: chosen[key][f"latency_ms_{key}_{name}"] for name in files} for key in ("b1", "b32")}
    speedup = {key: {name: round(latency[key]["teacher"] / latency[key][name], 3) for name in files if name != "teacher"}
               for key in ("b1", "b32")}
    sizes = {"teacher": exports["teacher"]["bytes_onnx"], "student": exports["dynamic"]["bytes_onnx"],
             "dynamic": exports["dynamic"]["bytes_onnx_int8"], "static": exports["static"]["bytes_onnx_int8"]}
    commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    result = {
        "out": str(args.out), "recipe": str(args.recipe), "calibration_examples": args.calibration,
        "bytes_onnx": sizes, "size_ratio_vs_student_fp32": {k: round(sizes["student"] / v, 3) for k, v in sizes.items()},
        "accuracy_validation": validation, "accuracy_test": test,
        "latency_ms": latency, "speedup_vs_teacher_fp32": speedup,
        "latency_rounds": {key: [r[f"latency_ms_{key}_static"] for r in rounds] for key in ("b1", "b32")},
        "ort_threads": chosen["b1"]["ort_threads"], "export_seconds": export_seconds,
        "methods": {k: exports[k].get("int8") for k in ("dynamic", "static")},
        "hardware": hardware_description(), "python": platform.python_version(),
        "commit": commit, "command": "python benchmarks/int8_modes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    text = json.dumps(result, indent=2) + "\n"
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
