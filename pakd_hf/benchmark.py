"""Teacher vs student, side by side, in one process, on the same inputs.

Latency is the median of repeated timed forward passes after a warm-up, with the number of
threads fixed and reported; teacher and student runs are interleaved so that a change in
machine load hits both. Like :mod:`timeit`, the garbage collector is paused while timing, so a
collection over the objects a training run left behind (``pakd compress`` measures in the
process that trained) never lands in a timed pass. Size is safetensors bytes on disk,
parameters and MACs are counted.
Nothing here asserts a speed: numbers are measured and reported (`report.json`, the card).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .measure import count_macs, count_params, safetensors_bytes

__all__ = ["hardware_description", "latency_ms", "compare_models", "REPORT_KEYS"]

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


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    with torch.inference_mode():
        model(**inputs)


def latency_ms(model: nn.Module, inputs: dict[str, torch.Tensor], *, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time (ms) of ``model(**inputs)`` in eval mode under inference_mode."""
    medians, _ = _interleaved_latency({"model": (model, inputs)}, warmup, repeats)
    return medians["model"]


def _interleaved_latency(
    runs: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]], warmup: int, repeats: int, min_seconds: float = 0.0
) -> tuple[dict[str, float], int]:
    """Median ms per run name, and the number of rounds: at least ``repeats``, and more until
    ``min_seconds`` have passed (at batch 1 twenty rounds last half a second, shorter than a
    burst of load on a shared machine)."""
    for model, inputs in runs.values():
        model.eval()
        for _ in range(warmup):
            _forward(model, inputs)
    times: dict[str, list[float]] = {name: [] for name in runs}
    rounds = 0
    with _gc_paused():
        began = time.perf_counter()
        while rounds < repeats or time.perf_counter() - began < min_seconds:
            for name, (model, inputs) in runs.items():
                start = time.perf_counter()
                _forward(model, inputs)
                times[name].append((time.perf_counter() - start) * 1000)
            rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}, rounds


def compare_models(
    teacher: nn.Module,
    student: nn.Module,
    make_inputs: Callable[[int], dict[str, torch.Tensor]],
    *,
    teacher_dir: str | os.PathLike | None = None,
    student_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    batch_sizes: tuple[int, int] = (1, 32),
    warmup: int = 3,
    repeats: int = 10,
    min_seconds: float = 0.0,
    accuracy: tuple[float, float] | None = None,
    split: str | None = None,
    n_eval: int | None = None,
    make_student_inputs: Callable[[int], dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Measure both models and return a report with :data:`REPORT_KEYS` (those known).

    ``make_inputs(batch_size)`` returns the model inputs for one batch (the same for both
    models, unless ``make_student_inputs`` gives the student's own encoding of the same
    examples, e.g. after vocabulary pruning); ``*_dir`` are saved folders for the on-disk
    size; ``accuracy`` is (teacher, student) measured by the caller on ``split`` with
    ``n_eval`` examples. Each batch size runs at least ``repeats`` interleaved rounds and
    keeps going until ``min_seconds`` have passed; the counts are reported
    (``latency_repeats_b1``, ``latency_repeats_b32``).
    """
    make_student_inputs = make_student_inputs or make_inputs
    previous = torch.get_num_threads()
    threads = threads or previous
    torch.set_num_threads(threads)
    try:
        b1, b32 = batch_sizes
        report: dict[str, Any] = {
            "params_teacher": count_params(teacher),
            "params_student": count_params(student),
            "macs_teacher": count_macs(teacher, make_inputs(1)),
            "macs_student": count_macs(student, make_student_inputs(1)),
        }
        for bs, key in ((b1, "b1"), (b32, "b32")):
            lat, rounds = _interleaved_latency(
                {"teacher": (teacher, make_inputs(bs)), "student": (student, make_student_inputs(bs))}, warmup, repeats,
                min_seconds,
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
    if accuracy is not None:
        t_acc, s_acc = accuracy
        report["accuracy_teacher"] = round(float(t_acc), 5)
        report["accuracy_student"] = round(float(s_acc), 5)
        report["accuracy_kept"] = round(float(s_acc) / float(t_acc), 5) if t_acc else None
    report["hardware"] = hardware_description()
    report["threads"] = threads
    report["batch_sizes"] = list(batch_sizes)
    report["latency_repeats"] = repeats
    if split is not None:
        report["split"] = split
    if n_eval is not None:
        report["n_eval"] = n_eval
    extra = ["batch_sizes", "latency_repeats", "latency_repeats_b1", "latency_repeats_b32"]
    return {k: report[k] for k in [*REPORT_KEYS, *extra] if k in report}
