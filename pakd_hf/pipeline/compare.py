"""`pakd benchmark`: two saved models (or two ONNX exports) compared side by side: size,
MACs, latency at batch 1 and 32, and, with a recipe's data, the test score of each. Also the
measurement `pakd compress` runs on its teacher and student (:func:`measure_folders`, in fresh
processes) and the summary both print. The timing itself is :mod:`pakd_hf.benchmark`'s.

torch, transformers and the task adapters are imported inside the functions: the CLI imports
this module for its defaults, and `pakd --help` should not wait for torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..recipe import Data, Recipe, RecipeError, load_recipe

__all__ = ["benchmark_folders", "benchmark_onnx_folders", "measure_folders", "print_summary", "LATENCY_MIN_SECONDS",
           "LATENCY_EXAMPLES", "LATENCY_PROCESSES"]

# Timed rounds per batch size go on for at least this long (and at least `repeats` rounds):
# on a shared machine a burst of load outlasts twenty batch-1 rounds (half a second).
LATENCY_MIN_SECONDS = 5.0
# Both batch sizes are timed on the test split's first 32 examples (batch 1: one per run, cycling).
LATENCY_EXAMPLES = 32
# ... in this many fresh processes, one after another; the report keeps the median run (the
# batch-1 ratio of the same folders moves far more between processes than within one).
LATENCY_PROCESSES = 3


def benchmark_folders(
    teacher_dir, student_dir, *, recipe=None, threads: int | None = None, repeats: int = 20,
    min_seconds: float = LATENCY_MIN_SECONDS, device: str = "cpu",
) -> dict[str, Any]:
    """`pakd benchmark`: two saved models side by side, each with its own preprocessor.

    The task (text, image or audio classification, text generation) is read from the folders'
    preprocessor files and config. With a recipe, its test split gives the inputs and the
    accuracy (perplexity for text generation); without one, fixed sentences or seeded noise
    images / clips give the inputs (no score).
    """
    import torch

    from ..benchmark import check_device, with_accuracy, with_perplexity
    from .tasks import ADAPTERS, folder_task

    device = check_device(device, "--device")
    folders = [Path(teacher_dir), Path(student_dir)]
    for folder in folders:
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json)")
    tasks = {folder_task(f) for f in folders}
    if len(tasks) > 1:
        raise ValueError(f"the two folders are for different tasks ({', '.join(sorted(tasks))})")
    task = tasks.pop()
    scores, split, n_eval = None, None, None
    adapter = ADAPTERS[task]
    recipe, spec, examples, gold = _benchmark_inputs(recipe, task, folders[0])
    if gold is not None:
        from datasets import Dataset

        rows = Dataset.from_dict({adapter.column(spec): examples, **({spec.label_column: gold} if adapter.labelled else {})})
        split, n_eval = "test", adapter.eval_size(rows, adapter.load_preprocessor(folders[1]), spec)
        scores = tuple(
            adapter.score(adapter.model_class().from_pretrained(f).eval(), adapter.load_preprocessor(f), rows, spec,
                          recipe.training.eval_batch_size if recipe.training else 32)
            for f in folders
        )
    examples = adapter.benchmark_examples(examples, spec)

    report = measure_folders(
        teacher_dir, student_dir, task=task, spec=spec, examples=examples[:LATENCY_EXAMPLES],
        threads=threads or torch.get_num_threads(), repeats=repeats, min_seconds=min_seconds, device=device,
    )
    if scores is not None and adapter.metric == "perplexity":
        report = with_perplexity(report, scores, split, n_eval)
    elif scores is not None:
        report = with_accuracy(report, scores, split, n_eval)
    print_summary(report, None)
    return report


def _benchmark_inputs(recipe, task: str, folder: Path) -> tuple[Recipe | None, Data, list, list[int] | None]:
    """(recipe, its data block, examples, gold labels) for `pakd benchmark`: with ``--data``,
    the recipe's test split (its task must be ``task``); without, no recipe, the data block's
    default encoding and fixed sentences or seeded noise images / clips for ``folder``'s
    preprocessor (no labels)."""
    from .tasks import ADAPTERS, default_data, sample_examples

    adapter = ADAPTERS[task]
    if recipe is None:
        return None, default_data(), sample_examples(task, adapter.load_preprocessor(folder)), None
    recipe = load_recipe(recipe)
    if recipe.data is None:
        raise RecipeError("data", "--data needs a recipe with a data block")
    if recipe.task != task:
        raise RecipeError("task", f"the recipe is for {recipe.task} but the models to compare are {task} models")
    from .compress import load_data  # compress imports this module (its benchmark): loaded here, on use

    data = load_data(recipe, quick=False)
    gold = list(data["test"][recipe.data.label_column]) if adapter.labelled else []  # [] : scored without labels
    return recipe, recipe.data, list(data["test"][adapter.column(recipe.data)]), gold


def _onnx_folder(folder: Path) -> Path:
    """An ONNX folder of `pakd export`: ``folder`` itself or its ``onnx/``."""
    from .deploy import ONNX_DIR, read_export_info

    for candidate in (folder, folder / ONNX_DIR):
        if read_export_info(candidate) is not None:
            return candidate
    raise FileNotFoundError(f"{folder} holds no ONNX export (export.json): run `pakd export {folder}` first")


def benchmark_onnx_folders(
    teacher_dir, student_dir, *, recipe=None, threads: int | None = None, repeats: int = 20,
    min_seconds: float = LATENCY_MIN_SECONDS,
) -> dict[str, Any]:
    """`pakd benchmark --runtime ort`: two ONNX exports (folders of `pakd export`, or model
    folders with one in ``onnx/``) timed side by side in ONNX Runtime, the student's int8 model
    too when it has one, with the eager benchmark's protocol (same examples, interleaved,
    medians, threads fixed). With a recipe, its test split gives the inputs and the accuracy."""
    import torch

    from ..benchmark import hardware_description
    from ..export_files import onnx_bytes
    from .deploy import FP32_FILE, INT8_FILE, OrtModel, measure_onnx, read_export_info
    from .tasks import ADAPTERS

    folders = [_onnx_folder(Path(teacher_dir)), _onnx_folder(Path(student_dir))]
    infos = [read_export_info(f) for f in folders]
    if infos[0]["task"] != infos[1]["task"]:
        raise ValueError(f"the two exports are for different tasks ({infos[0]['task']}, {infos[1]['task']})")
    task = infos[0]["task"]
    adapter = ADAPTERS[task]
    runs = {"teacher": str(folders[0] / FP32_FILE), "student": str(folders[1] / FP32_FILE)}
    if (folders[1] / INT8_FILE).is_file():
        runs["int8"] = str(folders[1] / INT8_FILE)
    threads = threads or torch.get_num_threads()
    report: dict[str, Any] = {
        "bytes_onnx_teacher": onnx_bytes(folders[0] / FP32_FILE),
        "bytes_onnx_student": onnx_bytes(folders[1] / FP32_FILE),
    }
    if "int8" in runs:
        report["bytes_onnx_int8"] = onnx_bytes(folders[1] / INT8_FILE)
    _, spec, examples, gold = _benchmark_inputs(recipe, task, folders[0])
    if gold is not None:
        for name, path in runs.items():
            model = OrtModel(path, threads)
            acc = adapter.accuracy(model, adapter.load_preprocessor(Path(path).parent), examples, gold, spec, 128)
            report[f"accuracy_{'student_int8' if name == 'int8' else name}_ort"] = round(acc, 5)
        report.update(split="test", n_eval=len(examples))
    report.update(measure_onnx(runs, task=task, spec=spec, examples=examples[:LATENCY_EXAMPLES], threads=threads,
                               repeats=repeats, min_seconds=min_seconds))
    report["hardware"] = hardware_description()
    _print_onnx_summary(report)
    return report


def _print_onnx_summary(r: dict[str, Any]) -> None:
    columns = [("teacher", "teacher_ort"), ("student", "student_ort")]
    if "latency_ms_b1_student_ort_int8" in r:
        columns.append(("student int8", "student_ort_int8"))
    bytes_keys = {"teacher_ort": "bytes_onnx_teacher", "student_ort": "bytes_onnx_student", "student_ort_int8": "bytes_onnx_int8"}
    print(f"\n{'ONNX Runtime':<20}" + "".join(f"{name:>16}" for name, _ in columns))
    print(f"{'ONNX bytes':<20}" + "".join(f"{r[bytes_keys[k]]:>16,}" for _, k in columns))
    for bs in ("b1", "b32"):
        print(f"{'latency ' + bs + ' (ms)':<20}" + "".join(f"{r[f'latency_ms_{bs}_{k}']:>16.3f}" for _, k in columns))
    for name, key in (("speedup b1", "b1"), ("speedup b32", "b32")):
        cells = ["", f"{r[f'speedup_{key}_ort']:.1f}x"] + ([f"{r[f'speedup_{key}_ort_int8']:.1f}x"] if len(columns) > 2 else [])
        print(f"{name:<20}" + "".join(f"{c:>16}" for c in cells))
    accuracy = {"teacher_ort": "accuracy_teacher_ort", "student_ort": "accuracy_student_ort",
                "student_ort_int8": "accuracy_student_int8_ort"}
    if accuracy["teacher_ort"] in r:
        print(f"{'accuracy (test)':<20}" + "".join(f"{r[accuracy[k]]:>16.4f}" for _, k in columns))
    print(f"\n{r['hardware']}, {r['ort_threads']} threads (ONNX Runtime intra-op)")


def measure_folders(
    teacher_dir, student_dir, *, task: str, spec: Data, examples: list, threads: int, repeats: int, min_seconds: float,
    device: str = "cpu",
) -> dict[str, Any]:
    """Size, MACs and latency of two saved classifiers, each loaded with its stock Auto class
    and fed its own preprocessor's encoding of the same ``examples`` (see
    :func:`pakd_hf.benchmark.compare_models`). Module-level so that ``pakd compress`` can run
    it in a fresh process (:func:`pakd_hf.benchmark.in_fresh_process`)."""
    from ..benchmark import compare_models
    from ..measure import prefill_kwargs
    from .tasks import ADAPTERS

    adapter = ADAPTERS[task]
    models = [adapter.model_class().from_pretrained(f).eval() for f in (teacher_dir, student_dir)]
    pres = [adapter.load_preprocessor(f) for f in (teacher_dir, student_dir)]

    # A causal LM's prefill as generate() runs it (pakd_hf.measure.prefill_kwargs).
    def encoder(pre, model):
        prefill = prefill_kwargs(model)
        return lambda indices: {**adapter.encode_batch(pre, [examples[i] for i in indices], spec), **prefill}

    report = compare_models(
        models[0], models[1], encoder(pres[0], models[0]), make_student_inputs=encoder(pres[1], models[1]), teacher_dir=teacher_dir,
        student_dir=student_dir, threads=threads, repeats=repeats, min_seconds=min_seconds, examples=len(examples),
        device=device,
    )
    if task == "text-generation":
        from ..benchmark import ordered_report, generation_speed

        # a fixed prompt (the first benchmark text's first 32 tokens), 64 new tokens, greedy
        prompts = {who: {k: v.to(device) for k, v in pre(examples[:1], truncation=True, max_length=32,
                                                          return_tensors="pt").items()}
                   for who, pre in zip(("teacher", "student"), pres)}  # where compare_models left the models
        speed = generation_speed(dict(zip(("teacher", "student"), models)), prompts, new_tokens=64,
                                 repeats=max(3, repeats // 4), threads=threads)
        report.update(generate_tokens_per_s_teacher=round(speed["teacher"], 2),
                      generate_tokens_per_s_student=round(speed["student"], 2),
                      generate_speedup=round(speed["student"] / speed["teacher"], 3), generate_new_tokens=64,
                      generate_prompt_tokens=int(prompts["teacher"]["input_ids"].shape[1]))
        report = ordered_report(report)
    return report


def print_summary(r: dict[str, Any], out: Path | None) -> None:
    def get(key, fmt):
        return format(r[key], fmt) if r.get(key) is not None else "n/a"

    rows = [
        ("parameters", f"{r['params_teacher']:,}", f"{r['params_student']:,}", f"{r['params_teacher'] / r['params_student']:.1f}x"),
        ("safetensors bytes", f"{r['bytes_teacher']:,}", f"{r['bytes_student']:,}", f"{r['size_ratio']:.1f}x"),
        ("MACs / sample", f"{r['macs_teacher']:,}", f"{r['macs_student']:,}", f"{r['mac_ratio']:.1f}x"),
        ("latency b1 (ms)", f"{r['latency_ms_b1_teacher']:.2f}", f"{r['latency_ms_b1_student']:.2f}", f"{r['speedup_b1']:.1f}x"),
        ("latency b32 (ms)", f"{r['latency_ms_b32_teacher']:.2f}", f"{r['latency_ms_b32_student']:.2f}", f"{r['speedup_b32']:.1f}x"),
    ]
    if "generate_speedup" in r:  # a causal LM: perplexity (when measured) and generation speed
        rows.append(("perplexity (test)", get("perplexity_teacher", ".2f"), get("perplexity_student", ".2f"),
                     f"{get('perplexity_ratio', '.3f')}x"))
        rows.append(("generate (tok/s, b1)", get("generate_tokens_per_s_teacher", ".1f"),
                     get("generate_tokens_per_s_student", ".1f"), f"{get('generate_speedup', '.1f')}x"))
    else:
        rows.append(("accuracy (test)", get("accuracy_teacher", ".4f"), get("accuracy_student", ".4f"),
                     f"{get('accuracy_kept', '.3f')} kept"))
    print(f"\n{'':<20}{'teacher':>14}{'student':>14}{'ratio':>12}")
    for name, t, s, ratio in rows:
        print(f"{name:<20}{t:>14}{s:>14}{ratio:>12}")
    tail = f"{r['hardware']}, {r['threads']} threads" if r.get("benchmark_device", "cpu") == "cpu" else r["hardware"]
    if out is not None:
        tail += (f"; teacher fine-tune {r.get('teacher_fine_tune_seconds') or 0:.0f} s, compression "
                 f"{r['compress_seconds']:.0f} s. Output: {out}")
    print(f"\n{tail}")
