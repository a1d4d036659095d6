"""Teacher vs student, side by side, in one process, on the same inputs.

Latency is the median of repeated timed forward passes after a warm-up, with the number of
threads fixed and reported; teacher and student runs are interleaved so that a change in
machine load hits both. Each timed pass follows an untimed pass of the same model on the same
input, so that each model is timed in its own steady state, as when it serves requests alone,
not right after the other model (a teacher's weights, 90 MB for MiniLM, push a small student's
out of the CPU caches). Both batch sizes run on the same real examples (32 by default): at
batch 32 as one batch, at batch 1 one example per timed run, cycling through them, so that a
batch-1 figure is not the speed of whichever example happens to come first (the teacher's work
grows with the snippet's length, a small student's fixed per-layer overhead much less). Like
:mod:`timeit`, the garbage collector is paused while timing. Size is safetensors bytes on
disk, parameters and MACs are counted.
Nothing here asserts a speed: numbers are measured and reported (`report.json`, the card).
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .measure import count_macs, count_params, safetensors_bytes

__all__ = [
    "hardware_description", "latency_ms", "interleaved_latency", "compare_models", "with_accuracy", "median_run",
    "in_fresh_process", "vocabulary_share", "with_validation_accuracy", "with_perplexity", "generation_speed",
    "REPORT_KEYS",
]

REPORT_KEYS = (
    "params_teacher", "params_student", "bytes_teacher", "bytes_student", "size_ratio",
    "macs_teacher", "macs_student", "mac_ratio",
    "latency_ms_b1_teacher", "latency_ms_b1_student", "speedup_b1",
    "latency_ms_b32_teacher", "latency_ms_b32_student", "speedup_b32",
    "accuracy_teacher", "accuracy_student", "accuracy_kept",
    "hardware", "threads", "split", "n_eval",
)


def hardware_description() -> str:
    """CPU model name and logical core count, e.g. 'Intel(R) Xeon(R) ... (2 logical cores)'."""
    name = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} logical cores)"


@contextlib.contextmanager
def _gc_paused():
    """Collect once, then keep the garbage collector off until the block ends (as timeit does)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


Inputs = dict[str, torch.Tensor]


def _forward(model: nn.Module, inputs: Inputs) -> None:
    with torch.inference_mode():
        model(**inputs)
    first = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
    if first is not None and first.device.type == "cuda":  # kernels run asynchronously: wait for them
        torch.cuda.synchronize(first.device)
    elif first is not None and first.device.type == "mps":
        torch.mps.synchronize()


def check_device(device: str, flag: str = "--benchmark-device") -> str:
    """``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) as torch names it, or ValueError (one
    line naming ``flag``) when it is not a device or not on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag}: '{str(device)[:40]}' is not a device (cpu, cuda, cuda:N or mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: this machine has no CUDA device (use cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{flag} {device}: MPS is not available here (use cpu)")
    elif parsed.type != "cpu":
        raise ValueError(f"{flag}: '{device}' is not cpu, cuda, cuda:N or mps")
    return str(parsed)


def device_description(device: str) -> str:
    """What the latencies ran on: the CPU's model and cores, or the accelerator's name."""
    parsed = torch.device(device)
    if parsed.type == "cuda":
        return f"{torch.cuda.get_device_name(parsed)} ({device})"
    if parsed.type == "mps":
        return "Apple GPU (mps)"
    return hardware_description()


def latency_ms(model: nn.Module, inputs: Inputs | list[Inputs], *, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time (ms) of ``model(**inputs)`` in eval mode under inference_mode; with a
    list of inputs, the timed runs cycle through it (each is run at least once)."""
    medians, _ = interleaved_latency({"model": (model, inputs)}, warmup, repeats)
    return medians["model"]


def interleaved_latency(
    runs: dict[str, tuple[nn.Module, Inputs | list[Inputs]]], warmup: int, repeats: int, min_seconds: float = 0.0
) -> tuple[dict[str, float], int]:
    """Median ms per run name, and the number of rounds. Round ``r`` runs every model on its
    ``r % n``-th input (the same example for all when the lists are parallel), untimed and then
    timed; there are at least ``repeats`` rounds and at least one per input, and more until
    ``min_seconds`` have passed (at batch 1 twenty rounds last half a second, shorter than a
    burst of load on a shared machine)."""
    runs = {name: (model, inputs if isinstance(inputs, list) else [inputs]) for name, (model, inputs) in runs.items()}
    n = max(len(inputs) for _, inputs in runs.values())
    for model, inputs in runs.values():
        model.eval()
        for i in range(max(warmup, len(inputs))):
            _forward(model, inputs[i % len(inputs)])
    times: dict[str, list[float]] = {name: [] for name in runs}
    rounds = 0
    with _gc_paused():
        began = time.perf_counter()
        while rounds < max(repeats, n) or time.perf_counter() - began < min_seconds:
            for name, (model, inputs) in runs.items():
                batch = inputs[rounds % len(inputs)]
                _forward(model, batch)  # untimed: this model's own weights back in cache (module docs)
                start = time.perf_counter()
                _forward(model, batch)
                times[name].append((time.perf_counter() - start) * 1000)
            rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}, rounds


def compare_models(
    teacher: nn.Module,
    student: nn.Module,
    make_inputs: Callable[[list[int]], Inputs],
    *,
    teacher_dir: str | os.PathLike | None = None,
    student_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    batch_sizes: tuple[int, int] = (1, 32),
    warmup: int = 3,
    repeats: int = 10,
    min_seconds: float = 0.0,
    examples: int = 32,
    accuracy: tuple[float, float] | None = None,
    split: str | None = None,
    n_eval: int | None = None,
    make_student_inputs: Callable[[list[int]], Inputs] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Measure both models and return a report with :data:`REPORT_KEYS` (those known).

    ``make_inputs(indices)`` returns the model inputs for a batch of those examples (the same
    for both models, unless ``make_student_inputs`` gives the student's own encoding of the
    same examples, e.g. after vocabulary pruning). Every batch size is timed on examples
    ``0 .. examples-1``: cut in order into ``ceil(examples / batch_size)`` batches (the last one
    wraps around to the first examples) that the timed rounds cycle through; at batch 1, one
    example per round. MACs are per example: the mean over those examples. ``*_dir`` are
    saved folders for the on-disk size; ``accuracy`` is (teacher, student) measured by the
    caller on ``split`` with ``n_eval`` examples. Each batch size runs at least ``repeats``
    interleaved rounds (and one per batch) and keeps going until ``min_seconds`` have passed;
    the counts are reported (``latency_repeats_b1``, ``latency_repeats_b32``).

    ``device``: where the latencies are measured (``cpu`` by default; ``cuda``, ``mps``: both
    models and every batch moved there, each forward waited for; the models stay there
    afterwards). Sizes and MACs do not depend on it; the report names it (``benchmark_device``,
    and ``hardware`` describes it).
    """
    device = str(torch.device(device))  # "cpu:0", a torch.device: one spelling in the report
    make_student_inputs = make_student_inputs or make_inputs
    previous = torch.get_num_threads()
    threads = threads or previous
    torch.set_num_threads(threads)
    try:
        b1, b32 = batch_sizes

        def batches(make, bs):
            return [make([(start + i) % examples for i in range(bs)]) for start in range(0, examples, bs)]

        singles = (batches(make_inputs, 1), batches(make_student_inputs, 1))  # MACs, and the batch-1 runs
        report: dict[str, Any] = {
            "params_teacher": count_params(teacher),
            "params_student": count_params(student),
            "macs_teacher": round(statistics.mean(count_macs(teacher, x) for x in singles[0])),
            "macs_student": round(statistics.mean(count_macs(student, x) for x in singles[1])),
        }
        if device != "cpu":  # MACs above were counted on the CPU copies; time where the user asked
            teacher, student = teacher.to(device), student.to(device)

        def placed(runs):
            return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()} for x in runs]

        for bs, key in ((b1, "b1"), (b32, "b32")):
            t_in, s_in = singles if bs == 1 else (batches(make_inputs, bs), batches(make_student_inputs, bs))
            if device != "cpu":
                t_in, s_in = placed(t_in), placed(s_in)
            lat, rounds = interleaved_latency(
                {"teacher": (teacher, t_in), "student": (student, s_in)}, warmup, repeats, min_seconds
            )
            report[f"latency_repeats_{key}"] = rounds
            report[f"latency_ms_{key}_teacher"] = round(lat["teacher"], 4)
            report[f"latency_ms_{key}_student"] = round(lat["student"], 4)
            report[f"speedup_{key}"] = round(lat["teacher"] / lat["student"], 3)
    finally:
        torch.set_num_threads(previous)
    report["mac_ratio"] = round(report["macs_teacher"] / report["macs_student"], 3)
    if teacher_dir is not None and student_dir is not None:
        report["bytes_teacher"] = safetensors_bytes(teacher_dir)
        report["bytes_student"] = safetensors_bytes(student_dir)
        report["size_ratio"] = round(report["bytes_teacher"] / report["bytes_student"], 3)
        report.update(vocabulary_share(teacher, student, report["bytes_teacher"], report["bytes_student"]))
    report["hardware"] = device_description(device)
    report["benchmark_device"] = device
    report["threads"] = threads
    report["batch_sizes"] = list(batch_sizes)
    report["latency_repeats"] = repeats
    report["latency_examples"] = examples
    if accuracy is not None:
        return with_accuracy(report, accuracy, split, n_eval)
    return ordered_report(report)


def vocabulary_share(teacher: nn.Module, student: nn.Module, bytes_teacher: int, bytes_student: int) -> dict[str, Any]:
    """The size ratio without the part that vocabulary trimming gave.

    ``size_ratio_same_vocab`` is (teacher bytes minus the teacher's embedding rows of the
    tokens the student dropped) over student bytes: what pruning and distillation gave beyond
    keeping fewer tokens (a teacher with the student's vocabulary would be that big). Models
    without a token embedding table (vision, audio) get ``vocab_*`` of None and the plain ratio.
    """
    def table(model):
        try:
            embeddings = model.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return None
        return embeddings.weight if isinstance(embeddings, nn.Embedding) else None

    t, s = table(teacher), table(student)
    if t is None or s is None:
        return {"vocab_teacher": None, "vocab_student": None, "bytes_teacher_same_vocab": bytes_teacher,
                "size_ratio_same_vocab": round(bytes_teacher / bytes_student, 3)}
    dropped = max(t.shape[0] - s.shape[0], 0) * t[0].numel() * t.element_size()
    return {"vocab_teacher": int(t.shape[0]), "vocab_student": int(s.shape[0]),
            "bytes_teacher_same_vocab": bytes_teacher - dropped,
            "size_ratio_same_vocab": round((bytes_teacher - dropped) / bytes_student, 3)}


def with_accuracy(
    report: dict[str, Any], accuracy: tuple[float, float], split: str | None = None, n_eval: int | None = None
) -> dict[str, Any]:
    """``report`` plus the accuracy keys for (teacher, student) measured on ``split`` (``n_eval``
    examples), in the report's key order."""
    t_acc, s_acc = accuracy
    report = {**report, "accuracy_teacher": round(float(t_acc), 5), "accuracy_student": round(float(s_acc), 5),
              "accuracy_kept": round(float(s_acc) / float(t_acc), 5) if t_acc else None}
    if split is not None:
        report["split"] = split
    if n_eval is not None:
        report["n_eval"] = n_eval
    return ordered_report(report)


def with_perplexity(report: dict[str, Any], perplexity: tuple[float, float], split: str, n_eval: int, *,
                    validation: bool = False) -> dict[str, Any]:
    """``report`` plus the (teacher, student) perplexity on ``split`` (``n_eval`` scored tokens), for
    causal LMs: ``perplexity_teacher``, ``perplexity_student`` and ``perplexity_ratio``
    (student over teacher: 1.10 = 10% higher); with ``validation``, the ``*_validation`` keys
    (the figures choices are made on) and ``n_validation``."""
    t, s = (float(x) for x in perplexity)
    suffix = "_validation" if validation else ""
    out = {**report, f"perplexity_teacher{suffix}": round(t, 4), f"perplexity_student{suffix}": round(s, 4),
           f"perplexity_ratio{suffix}": round(s / t, 5)}
    out.update({"n_validation": n_eval} if validation else {"split": split, "n_eval": n_eval})
    return ordered_report(out)


def generation_speed(models: dict[str, nn.Module], prompts: dict[str, Inputs], *, new_tokens: int = 64,
                     repeats: int = 5, threads: int | None = None) -> dict[str, float]:
    """New tokens per second of greedy ``generate()`` at batch 1 (KV cache on, exactly
    ``new_tokens`` tokens: EOS does not stop it), per model name: the median of ``repeats``
    interleaved timed runs after one untimed run each. ``prompts``: each model's own encoding
    of the same prompt (``input_ids`` and ``attention_mask`` of one row)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    times: dict[str, list[float]] = {name: [] for name in models}
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    try:
        with torch.inference_mode():
            for name, model in models.items():
                model.eval()
                model.generate(**prompts[name], **kw, pad_token_id=model.config.pad_token_id)
            with _gc_paused():
                for _ in range(repeats):
                    for name, model in models.items():
                        start = time.perf_counter()
                        out = model.generate(**prompts[name], **kw, pad_token_id=model.config.pad_token_id)
                        if out.device.type == "cuda":  # the last kernels may still run
                            torch.cuda.synchronize(out.device)
                        times[name].append(time.perf_counter() - start)
                        assert out.shape[1] - prompts[name]["input_ids"].shape[1] == new_tokens
    finally:
        torch.set_num_threads(previous)
    return {name: new_tokens / statistics.median(t) for name, t in times.items()}


def with_validation_accuracy(report: dict[str, Any], accuracy: tuple[float, float], n: int) -> dict[str, Any]:
    """``report`` plus the (teacher, student) accuracy on the validation split (``n`` examples):
    the figures that choices are made on; the test figures stay in ``accuracy_*``."""
    t_acc, s_acc = accuracy
    return ordered_report({**report, "accuracy_teacher_validation": round(float(t_acc), 5),
                     "accuracy_student_validation": round(float(s_acc), 5),
                     "accuracy_kept_validation": round(float(s_acc) / float(t_acc), 5) if t_acc else None,
                     "n_validation": n})


_EXTRA_KEYS = (
    "vocab_teacher", "vocab_student", "bytes_teacher_same_vocab", "size_ratio_same_vocab",
    "accuracy_teacher_validation", "accuracy_student_validation", "accuracy_kept_validation", "n_validation",
    "benchmark_device", "batch_sizes", "latency_examples", "latency_repeats", "latency_repeats_b1", "latency_repeats_b32",
    "latency_processes", "speedup_b1_runs", "speedup_b32_runs",
    # causal LMs (text-generation)
    "perplexity_teacher", "perplexity_student", "perplexity_ratio",
    "perplexity_teacher_validation", "perplexity_student_validation", "perplexity_ratio_validation",
    "generate_tokens_per_s_teacher", "generate_tokens_per_s_student", "generate_speedup", "generate_new_tokens",
    "generate_prompt_tokens",
)


def median_run(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several measurements of the same two models (e.g. in separate processes).

    Per batch size, the latencies, speedup and round count are those of the run with the median
    speedup (the lower middle for an even count), so that the three numbers still agree; every
    run's speedup is kept (``speedup_b1_runs``, ``speedup_b32_runs``) with their count
    (``latency_processes``). On a shared machine the batch-1 ratio of the same two folders moves
    more from one fresh process to the next than within one process."""
    if not reports:
        raise ValueError("median_run needs at least one report")
    merged = dict(reports[0])
    for key in ("b1", "b32"):
        if f"speedup_{key}" not in merged:
            continue
        ranked = sorted(reports, key=lambda r: r[f"speedup_{key}"])
        chosen = ranked[(len(ranked) - 1) // 2]
        for name in (f"latency_ms_{key}_teacher", f"latency_ms_{key}_student", f"speedup_{key}", f"latency_repeats_{key}"):
            merged[name] = chosen[name]
        merged[f"speedup_{key}_runs"] = [r[f"speedup_{key}"] for r in reports]
    if "generate_speedup" in merged:  # the same rule for the generation speed
        chosen = sorted(reports, key=lambda r: r["generate_speedup"])[(len(reports) - 1) // 2]
        for name in ("generate_tokens_per_s_teacher", "generate_tokens_per_s_student", "generate_speedup"):
            merged[name] = chosen[name]
    merged["latency_processes"] = len(reports)
    return ordered_report(merged)


def ordered_report(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in [*REPORT_KEYS, *_EXTRA_KEYS] if k in report}


def in_fresh_process(function: Callable[..., Any], /, **kwargs: Any) -> Any:
    """``function(**kwargs)`` run in a new Python interpreter; returns its (pickled) result.

    ``pakd compress`` times the saved folders this way, as a user who loads them does: in the
    process that trained, both models ran 12-20% slower than in a fresh one (the small student
    more), from the state a training run leaves behind. A plain subprocess rather than
    :mod:`multiprocessing`: a "spawn" child re-imports the caller's ``__main__``, which re-runs
    any script that calls :func:`pakd_hf.pipeline.compress.compress` without a ``__main__`` guard.
    ``function`` must be importable by module and name; its output is discarded unless it fails.
    """
    root = str(Path(__file__).resolve().parent.parent)  # this package, also when run from a source tree
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory(prefix="pakd-") as tmp:
        result = Path(tmp) / "result.pkl"
        code = "import sys; from pakd_hf.benchmark import _fresh_process_main; _fresh_process_main(sys.argv[1])"
        done = subprocess.run(
            [sys.executable, "-c", code, str(result)], input=pickle.dumps((function, kwargs)), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
        )
        if done.returncode != 0 or not result.is_file():
            tail = done.stdout.decode(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(f"{function.__qualname__} failed in a fresh process (exit {done.returncode}):\n" + "\n".join(tail))
        return pickle.loads(result.read_bytes())


def _fresh_process_main(result_path: str) -> None:
    function, kwargs = pickle.load(sys.stdin.buffer)
    Path(result_path).write_bytes(pickle.dumps(function(**kwargs)))
