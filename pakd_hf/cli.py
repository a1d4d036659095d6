"""The `pakd` command line. A thin layer over the library: parse, call, print.

Each command imports what it runs inside its handler: `pakd --help` and `pakd validate` answer
in about 0.1 s, where importing torch and transformers' Trainer takes 5-8 s on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .pipeline.preflight import preflight
from .recipe import RECIPE_FILENAME, RecipeError, load_recipe


def _cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path)
            notes: list[str] = []
            preflight(recipe, notes=notes, build=False)  # what it names (data set, teacher) is there, and its layer maps fit
        except RecipeError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 2
            continue
        stages = ", ".join(
            f"{s.name} ({f'{s.steps} steps' if s.steps is not None else f'{s.epochs:g} epochs'}"
            f"{', distil' if s.distillation is not None else ''})"
            for s in recipe.stages
        )
        print(f"{path}: ok: '{recipe.name}' ({recipe.task}), {len(recipe.stages)} stage(s): {stages}"
              + "".join(f"; {note}" for note in notes))
    return status


def _find_report(folder: Path) -> tuple[Path, Path]:
    """(student folder, report.json) for an output folder of `pakd compress` or a student folder."""
    for student, report in ((folder / "student", folder / "report.json"), (folder, folder.parent / "report.json"),
                            (folder, folder / "report.json")):
        if (student / "config.json").is_file() and report.is_file():
            return student, report
    raise FileNotFoundError(
        f"{folder}: no saved report found (expected {folder / 'report.json'} beside {folder / 'student'}); "
        "run `pakd compress` or `pakd benchmark --json` first"
    )


def _cmd_card(args: argparse.Namespace) -> int:
    from .hub import write_card

    try:
        student, report_path = _find_report(Path(args.dir))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = json.loads(report_path.read_text())
    except ValueError as exc:
        print(f"error: {report_path} is not a complete report ({exc}); run `pakd compress` again", file=sys.stderr)
        return 2
    pakd_json = student / "pakd.json"
    run_id = json.loads(pakd_json.read_text()).get("run_id") if pakd_json.is_file() else None
    if report.get("run_id") and run_id and report["run_id"] != run_id:
        print(f"error: {report_path} and {student} come from two different runs (run ids {report['run_id']} and "
              f"{run_id}): the run that wrote the student was stopped before its report; run `pakd compress` again",
              file=sys.stderr)
        return 2
    ablation = None
    if args.ablation:
        try:
            ablation = json.loads(Path(args.ablation).read_text())
            shape = ablation["shape"]
            arms = ablation["arms"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: --ablation {args.ablation}: not an ablation.json of `pakd ablate` ({exc})", file=sys.stderr)
            return 2
        config = json.loads((student / "config.json").read_text())
        differ = sorted(k for k, v in (shape or {}).items() if config.get(k) != v)
        if report.get("recipe") not in (None, ablation.get("recipe")):
            differ.append(f"recipe ('{ablation.get('recipe')}', the report's is '{report['recipe']}')")
        if bool(ablation.get("quick")) != bool(report.get("quick", ablation.get("quick"))):
            differ.append("--quick")
        # The same recipe with another `augment` block trains on other examples: their count tells.
        counts = sorted({run.get("train_examples") for arm in (arms or {}).values() if isinstance(arm, dict)
                         for run in arm.get("runs", []) if isinstance(run, dict)} - {None})
        if report.get("train_examples") is not None and counts and counts != [report["train_examples"]]:
            differ.append(f"the examples trained on ({', '.join(f'{n:,}' for n in counts)}; "
                          f"the report's {report['train_examples']:,})")
        if differ or not arms:
            print(f"error: --ablation {args.ablation}: it differs from {student} in {', '.join(differ) or 'arms'}; "
                  "pass the ablation of this recipe", file=sys.stderr)
            return 2
    path = write_card(student, report, repo_id=args.repo_id, ablation=ablation)
    print(f"wrote {path} from {report_path}" + (f" and {args.ablation}" if ablation else ""))
    return 0


def _repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` cannot name a Hub repository (None when it can): checked before any work."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        return "must be NAMESPACE/NAME"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return str(exc).splitlines()[0]
    return None


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import PushError, push_folder

    if args.token is not None:
        print("error: pakd push takes no --token (it would show in the process list): set HF_TOKEN or run "
              "`hf auth login`", file=sys.stderr)
        return 2
    if problem := _repo_id_problem(args.repo_id):
        print(f"error: --repo-id {args.repo_id!r}: {problem}", file=sys.stderr)
        return 2

    folder = Path(args.dir)
    if (folder / "student" / "config.json").is_file():
        folder = folder / "student"
    try:
        url = push_folder(folder, args.repo_id, private=args.private, revision=args.revision)
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"pushed {folder} to {args.repo_id}: {url}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from .pipeline.compress import compress
    from .hub import PushError

    if args.push_to_hub and not args.hub_model_id:
        print("error: --push-to-hub needs --hub-model-id NAMESPACE/NAME (nothing was run)", file=sys.stderr)
        return 2
    if args.push_to_hub and (problem := _repo_id_problem(args.hub_model_id)):
        print(f"error: --hub-model-id {args.hub_model_id!r}: {problem} (nothing was run)", file=sys.stderr)
        return 2
    overrides = None
    if args.training_flags:
        from .arguments import training_overrides

        try:
            overrides = training_overrides(args.training_flags)
        except ValueError as exc:
            print(f"error: {exc} (nothing was run)", file=sys.stderr)
            return 2
    try:
        return _run_pipeline(args.recipe, lambda: compress(
            args.recipe, args.output_dir, quick=args.quick, push_to_hub=args.hub_model_id if args.push_to_hub else None,
            threads=args.threads, seed=args.seed, save_steps=args.save_steps, restart=args.restart,
            training_overrides=overrides, training_threads=args.training_threads,
            benchmark_device=args.benchmark_device))
    except PushError as exc:
        print(f"error: {exc} (the outputs in {args.output_dir} are complete; push them later with `pakd push`)",
              file=sys.stderr)
        return 1


def _run_pipeline(recipe: str, call) -> int:
    """Run a pipeline command: a bad recipe or a missing file is one line and exit 2; an export
    that fails (or its missing packages) one line and exit 1."""
    from .errors import DeployError, LaunchError  # not from pipeline.deploy, which imports torch

    try:
        call()
    except RecipeError as exc:
        print(f"{recipe}: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except LaunchError as exc:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # every process of the machine finds the same
            print(f"error: {exc} (nothing was run)", file=sys.stderr)
        return 2
    return 0


MAX_SEED_COUNT = 1_000


def _seed_list(text: str) -> list[int]:
    """`--seeds 3` -> [0, 1, 2]; `--seeds 0,3,4` -> those seeds. A RecipeError (one line, before
    any work) for anything else: `--seeds 0` is a count of none (seed 0 alone is `0,`)."""
    from .recipe import MAX_SEED

    usage = "give a count (3: seeds 0, 1, 2) or a list of seeds (0,3,4; seed 0 alone: 0,)"
    try:  # (RecipeError is a ValueError: raised outside this block)
        listed = [int(v) for v in text.split(",") if v.strip()] if "," in text else None
        count = int(text) if listed is None else None
    except ValueError:
        raise RecipeError("--seeds", f"{text[:40]!r} is neither a count nor a list; {usage}") from None
    if count is not None and not 1 <= count <= MAX_SEED_COUNT:
        raise RecipeError("--seeds", f"{text!r} is a count of seeds: it must be in [1, {MAX_SEED_COUNT:,}]; {usage}")
    seeds = listed if listed is not None else list(range(count))
    if not seeds or len(seeds) > MAX_SEED_COUNT or not all(0 <= s <= MAX_SEED for s in seeds):
        raise RecipeError("--seeds", f"{text[:40]!r}: at most {MAX_SEED_COUNT:,} seeds, each in [0, 2**32 - 1]; {usage}")
    return seeds


def _cmd_ablate(args: argparse.Namespace) -> int:
    from .pipeline.ablate import AblationError, ablate

    from .pipeline.processes import launched

    if launched():
        print("error: pakd ablate runs in one process (its arms and seeds are independent runs: start several "
              "ablate commands with --arms or --seeds instead); torchrun and accelerate launch are for pakd compress",
              file=sys.stderr)
        return 2
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else None
    try:
        code = _run_pipeline(args.recipe, lambda: ablate(args.recipe, args.output_dir, seeds=_seed_list(args.seeds),
                                                         arms=arms, quick=args.quick, save_steps=args.save_steps))
    except AblationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if code == 0:
        print((Path(args.output_dir) / "ablation.md").read_text())
    return code


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .pipeline.compare import benchmark_folders, benchmark_onnx_folders

    run = benchmark_onnx_folders if args.runtime == "ort" else benchmark_folders
    if args.runtime == "ort" and args.device != "cpu":
        print("error: --device is for --runtime torch: the ONNX Runtime benchmark runs on the CPU", file=sys.stderr)
        return 2
    try:
        report = run(args.teacher_dir, args.student_dir, recipe=args.data, threads=args.threads,
                     repeats=args.repeats, min_seconds=args.min_seconds,
                     **({"device": args.device} if args.runtime == "torch" else {}))
    except (RecipeError, FileNotFoundError, ValueError) as exc:  # DeployError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _exported(call) -> dict | int:
    """An export's record, or the exit code after one line: 2 for bad input (no model folder,
    an output folder pakd did not write), 1 for an export that failed."""
    from .pipeline.deploy import DeployError

    try:
        return call()
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _cmd_export(args: argparse.Namespace) -> int:
    from .pipeline.deploy import EXECUTORCH_DIR, FP32_FILE, INT8_FILE, ONNX_DIR, PTE_FILE, export_executorch, export_onnx

    folder = Path(args.dir)
    if args.executorch:
        if args.int8:
            print("error: --int8 quantizes the ONNX model; --executorch exports fp32 (XNNPACK): drop one of them",
                  file=sys.stderr)
            return 2
        info = _exported(lambda: export_executorch(folder, args.output_dir))
        if isinstance(info, int):
            return info
        out = Path(args.output_dir) if args.output_dir else folder / EXECUTORCH_DIR
        print(f"{out / PTE_FILE}: {info['bytes_pte']:,} bytes, inputs {', '.join(info['inputs'])} (batch 1"
              + (", dynamic sequence" if any(info["dynamic_axes"].values()) else "") + f"); max |logit difference| vs "
              f"PyTorch {info['max_abs_diff']:.2g} (tolerance {info['tolerance']:g})")
        return 0
    if not 7 <= args.opset <= 23:
        print(f"error: --opset must be between 7 and 23, got {args.opset}", file=sys.stderr)
        return 2
    calibration, encoding = None, None
    if args.int8 == "static":
        found = _calibration(folder, args)
        if isinstance(found, int):
            return found
        calibration, encoding = found
    info = _exported(lambda: export_onnx(folder, args.output_dir, int8=args.int8, opset=args.opset, calibration=calibration,
                                         encoding=encoding))
    if isinstance(info, int):
        return info
    out = Path(args.output_dir) if args.output_dir else folder / ONNX_DIR
    print(f"{out / FP32_FILE}: {info['bytes_onnx']:,} bytes, inputs {', '.join(info['inputs'])} "
          f"(dynamic: {', '.join(sorted({a for axes in info['dynamic_axes'].values() for a in axes}))}); "
          f"max |logit difference| vs PyTorch {info['max_abs_diff']:.2g} (tolerance {info['tolerance']:g})")
    if args.int8:
        print(f"{out / INT8_FILE}: {info['int8_mode']} int8, {info['bytes_onnx_int8']:,} bytes "
              f"({info['bytes_onnx'] / info['bytes_onnx_int8']:.1f}x smaller), max |logit difference| vs PyTorch "
              f"{info['int8_max_abs_diff']:.2g}; measure its accuracy with "
              f"`pakd benchmark --runtime ort ... --data RECIPE`")
    return 0


def _calibration(folder: Path, args: argparse.Namespace) -> list | int:
    """Static int8's calibration examples: ``--calibration`` examples of the training split of
    ``--calibration-recipe``'s data (default: the recipe saved in the folder) and that data block
    (its encoding settings), or an exit code."""
    from .pipeline.deploy import DeployError, training_examples

    source = Path(args.calibration_recipe) if args.calibration_recipe else folder / RECIPE_FILENAME
    if not source.is_file():
        print(f"error: --int8 static calibrates on training examples: {folder} has no {RECIPE_FILENAME} naming its "
              "data; pass --calibration-recipe RECIPE", file=sys.stderr)
        return 2
    if args.calibration < 1:
        print(f"error: --calibration must be at least 1, got {args.calibration}", file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(source)
        return training_examples(recipe, args.calibration), recipe.data
    except (RecipeError, DeployError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _doc(description: str, example: str) -> dict:
    """A subcommand's --help text: what it does, then an example."""
    return {"description": description, "epilog": f"example:\n  {example}",
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser() -> argparse.ArgumentParser:
    from .pipeline.compare import LATENCY_MIN_SECONDS  # light: no torch at import time
    from .pipeline.compress import SAVE_STEPS

    parser = argparse.ArgumentParser(
        prog="pakd",
        description="Compress Hugging Face models by multi-stage pruning and knowledge distillation.",
    )
    parser.add_argument("--version", action="version", version=f"pakd-hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    validate = sub.add_parser("validate", help="check recipe files and print a summary of each", **_doc(
        "Load each recipe strictly (unknown keys, wrong types, values out of range, malformed YAML) and check what "
        "it names (the data set and teacher can be found; every stage's layer map fits the layers earlier stages "
        "leave); print one line per file; exit 2 if any is invalid.", "pakd validate recipes/nlp/*.yaml"))
    validate.add_argument("recipes", nargs="+", metavar="RECIPE.yaml", help="recipe files to check")
    validate.set_defaults(func=_cmd_validate)

    comp = sub.add_parser("compress", help="run a recipe end to end: teacher, PaKD stages, evaluation, benchmark, card",
                          **_doc("Fine-tune (or reuse) the teacher, run the recipe's PaKD stages on a copy of it, evaluate "
                                 "the saved student on validation and test, benchmark it against the teacher, write "
                                 "OUT/report.json and the model card.",
                                 "pakd compress recipes/nlp/minilm-rotten-tomatoes.yaml --output-dir runs/minilm-rt --seed 1"))
    comp.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe (with data and teacher blocks)")
    comp.epilog += ("\n\nAny TrainingArguments flag may follow (e.g. --report_to tensorboard --logging_steps 10 --bf16\n"
                    "--dataloader_num_workers 2): it applies to the teacher stage and the PaKD stages (save_* flags to\n"
                    "the PaKD stages only), over the recipe's training block, and is recorded in report.json and\n"
                    "pakd.json. Flags that would change the recipe's plan (--max_steps, --learning_rate, ...) are refused.\n"
                    "What a tracker writes under the training folders' runs/ is kept in OUT/runs/.")
    comp.add_argument("--output-dir", required=True, help="OUT: teacher/, student/ and report.json are written here")
    comp.add_argument("--quick", action="store_true", help="same path on a small slice and a few steps (smoke check)")
    # Both spellings: pakd's and the one HfArgumentParser gives TrainingArguments' fields.
    comp.add_argument("--push-to-hub", "--push_to_hub", action="store_true",
                      help="push the student when done (needs --hub-model-id)")
    comp.add_argument("--hub-model-id", "--hub_model_id", "--repo-id", dest="hub_model_id",
                      help="namespace/name to push to (the same as pakd push's --repo-id)")
    comp.add_argument("--threads", type=int, help="CPU threads for the benchmark (default: torch's)")
    comp.add_argument("--benchmark-device", default="cpu", metavar="DEVICE",
                      help="where the PyTorch latencies are measured: cpu (default: the report compares CPU latency), "
                      "cuda, cuda:N or mps; the report names it. ONNX Runtime figures stay on the CPU")
    comp.add_argument("--training-threads", "--training_threads", dest="training_threads", type=int, metavar="N",
                      help="CPU threads for the training stages (default: torch's). A rerun with the same N on the same "
                      "machine gives the same model; report.json records it")
    comp.add_argument("--seed", type=int, help="the student's seed (data order, dropout, new weights; default: the "
                      "recipe's seed). The teacher and the transfer set do not depend on it, so seeds share them")
    comp.add_argument("--save_steps", type=int, default=SAVE_STEPS, metavar="N",
                      help=f"checkpoint the PaKD stages every N steps (default {SAVE_STEPS}; 0: never). The same command "
                      "on the same OUT resumes from the newest complete checkpoint of an interrupted run")
    comp.add_argument("--restart", action="store_true", help="start the PaKD stages over instead of resuming")
    comp.set_defaults(func=_cmd_compress)

    abl = sub.add_parser(
        "ablate", help="train same-shape students by simpler routes (scratch, kd, prune-once-kd, prune-only) "
        "beside the recipe (pakd), over seeds, and compare them",
        **_doc("Each arm trains a student of the recipe's final shape for the same number of steps on the same "
               "examples, from the same cached teacher. Finished arm x seed runs are kept and skipped on a rerun.",
               "pakd ablate recipes/nlp/minilm-rotten-tomatoes.yaml --output-dir runs/ablation --seeds 3 "
               "--arms scratch,scratch@5,kd,kd@5,prune-once-kd,prune-only,pakd"),
    )
    abl.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe whose final shape every arm reaches")
    abl.add_argument("--output-dir", required=True, help="OUT: teacher/, transfer/, <arm>/seed-<n>/ and ablation.{json,md,png}")
    abl.add_argument("--seeds", default="3",
                     help="a count (3: seeds 0, 1, 2) or a comma-separated list (0,3,4; one seed: 2,)")
    abl.add_argument("--arms", help="comma-separated subset of scratch,kd,prune-once-kd,prune-only,pakd (default: all); "
                     "ARM@SCALE runs an arm with every learning rate times SCALE (kd@5), to tune a baseline on validation")
    abl.add_argument("--quick", action="store_true", help="same path on a small slice and a few steps (smoke check)")
    abl.add_argument("--save_steps", type=int, default=SAVE_STEPS, metavar="N",
                     help=f"checkpoint each run every N steps (default {SAVE_STEPS}; 0: never). The same command on the "
                     "same OUT resumes a run cut off mid-way from its newest complete checkpoint")
    abl.set_defaults(func=_cmd_ablate)

    bench = sub.add_parser("benchmark", help="measure a teacher and a student side by side (size, MACs, latency, accuracy)",
                           **_doc("Load two saved models with stock classes and time them side by side on the same "
                                  "inputs (interleaved rounds, medians, threads fixed); with --data, on the recipe's "
                                  "test split and with accuracy (perplexity for causal LMs, which also get greedy "
                                  "generation speed). The folders need their tokenizer or preprocessor.",
                                  "pakd benchmark runs/minilm-rt/teacher runs/minilm-rt/student --data "
                                  "recipes/nlp/minilm-rotten-tomatoes.yaml --json bench.json"))
    bench.add_argument("teacher_dir", metavar="TEACHER_DIR", help="the saved teacher (with its tokenizer or preprocessor)")
    bench.add_argument("student_dir", metavar="STUDENT_DIR", help="the saved student (with its tokenizer or preprocessor)")
    bench.add_argument("--data", metavar="RECIPE", help="a recipe whose data block gives the test split (adds accuracy or perplexity)")
    bench.add_argument("--json", metavar="FILE", help="write the report as JSON")
    bench.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    bench.add_argument("--device", default="cpu", help="where the models run for the timings (--runtime torch): cpu "
                       "(default), cuda, cuda:N or mps; the report names it (benchmark_device)")
    bench.add_argument("--repeats", type=int, default=20, help="timed runs per model and batch size, at least (median reported)")
    bench.add_argument("--min-seconds", type=float, default=LATENCY_MIN_SECONDS,
                       help=f"keep timing each batch size for at least this long (default {LATENCY_MIN_SECONDS:g}; "
                       "0: exactly --repeats runs, and at batch 1 at least one per example)")
    bench.add_argument("--runtime", choices=("torch", "ort"), default="torch",
                       help="torch: the saved models in PyTorch (default); ort: their ONNX exports (`pakd export`: "
                       "the folders themselves or their onnx/) in ONNX Runtime, with the student's int8 model if any")
    bench.set_defaults(func=_cmd_benchmark)

    export = sub.add_parser("export", help="export a saved model to ONNX (and int8) for ONNX Runtime, checked against PyTorch",
                            **_doc("Export a saved classifier (student or teacher; text, image or audio) with torch.onnx.export, "
                                   "dynamic batch and sequence/sample axes, its tokenizer or processor beside it; run the same "
                                   "inputs through PyTorch and ONNX Runtime and fail if the logits differ by more than 1e-4. "
                                   "--int8 adds a quantized copy: dynamic (ONNX Runtime's quantize_dynamic; transformers) or "
                                   "static (quantize_static, calibrated on training examples of the folder's recipe; CNNs). Needs the "
                                   "export extra: pip install 'pakd-hf[export]'.",
                                   "pakd export runs/minilm-rt/student --int8"))
    export.add_argument("dir", metavar="DIR", help="a saved model folder (config.json, weights, tokenizer or processor)")
    export.add_argument("--output-dir", help="where model.onnx goes (default: DIR/onnx; replaced only if pakd export wrote it)")
    export.add_argument("--int8", nargs="?", const="dynamic", default=False, choices=["dynamic", "static"],
                        help="also write model_int8.onnx: dynamic (the default) or static int8 quantization")
    export.add_argument("--calibration-recipe", metavar="RECIPE",
                        help="--int8 static: the recipe whose training split calibrates (default: DIR/pakd_recipe.yaml)")
    export.add_argument("--calibration", type=int, default=256, metavar="N",
                        help="--int8 static: how many training examples calibrate (default 256)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.add_argument("--executorch", action="store_true",
                        help="an ExecuTorch program (model.pte, XNNPACK, batch 1) for phones and boards instead of ONNX "
                        "(default folder DIR/executorch; needs pip install 'pakd-hf[executorch]')")
    export.set_defaults(func=_cmd_export)

    card = sub.add_parser("card", help="(re)generate the model card of an output folder from its saved report",
                          **_doc("Render OUT/student/README.md (and its figure) from OUT/report.json; with --ablation, "
                                 "add the recipe over seeds beside same-size baselines.",
                                 "pakd card runs/minilm-rt --repo-id me/minilm-rt-pakd --ablation runs/ablation/ablation.json"))
    card.add_argument("dir", metavar="DIR", help="an output folder of `pakd compress` (or its student/ folder)")
    card.add_argument("--repo-id", "--hub-model-id", "--hub_model_id", dest="repo_id",
                      help="the Hub id the card's code should load from")
    card.add_argument("--ablation", metavar="ABLATION.json",
                      help="a `pakd ablate` summary of the same recipe: the card reports seeds and same-size baselines")
    card.set_defaults(func=_cmd_card)

    push = sub.add_parser("push", help="push a compressed student (and only it) to the Hugging Face Hub", **_doc(
        "Upload the student's allowlisted files (weights, config, tokenizer/processor, pakd.json, the recipe, the "
        "card and its figure). The token comes from HF_TOKEN or `hf auth login`, never from the command line "
        "(where other users of the machine could read it in the process list).",
        "pakd push runs/minilm-rt --repo-id me/minilm-rt-pakd --private   (after hf auth login, or with HF_TOKEN set)"))
    push.add_argument("dir", metavar="DIR", help="a student folder, or an output folder with student/")
    push.add_argument("--repo-id", "--hub-model-id", "--hub_model_id", dest="repo_id", required=True,
                      help="namespace/name on the Hub (--hub-model-id, as pakd compress spells it, works too)")
    push.add_argument("--private", action="store_true", default=None, help="create the repository private")
    push.add_argument("--revision", help="branch to push to (created if missing)")
    push.add_argument("--token", help=argparse.SUPPRESS)  # refused with a pointer to HF_TOKEN (old scripts)
    push.set_defaults(func=_cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `pakd compress` takes any TrainingArguments flag after its own (--report_to tensorboard
    # --bf16 ...); every other command takes only its own.
    args, rest = parser.parse_known_args(argv)
    if rest and getattr(args, "command", None) != "compress":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.training_flags = rest
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
