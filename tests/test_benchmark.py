"""What `compare_models` times (which examples, how many rounds) and the fresh-process runner."""

import os

import pytest
import torch

from pakd_hf.benchmark import compare_models, in_fresh_process, interleaved_latency, median_run
from toy import tiny_bert, toy_dataset


def _recording(model, seen):
    """Record the first token after [CLS] of every row of every forward (identifies the example)."""
    model.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["input_ids"][:, 1:4].tolist()), with_kwargs=True)
    return model


def test_both_batch_sizes_cycle_through_the_same_examples():
    data = toy_dataset(16, seed=3)
    key = [row[1:4] for row in data["input_ids"]]  # distinct enough to name each example
    assert len({tuple(k) for k in key[:5]}) == 5
    seen_t, seen_s = [], []
    teacher, student = _recording(tiny_bert(layers=2), seen_t), _recording(tiny_bert(hidden=16, layers=1, heads=2), seen_s)
    asked = []

    def make(indices):
        asked.append(list(indices))
        rows = data[indices]
        return {"input_ids": torch.tensor(rows["input_ids"]), "attention_mask": torch.tensor(rows["attention_mask"])}

    report = compare_models(teacher, student, make, threads=1, warmup=1, repeats=3, examples=5, batch_sizes=(1, 4))
    # batch 1: one example per batch, all five; batch 4: [0 1 2 3] then [4 0 1 2] (wrapping)
    assert asked[:5] == [[0], [1], [2], [3], [4]] and asked[-2:] == [[0, 1, 2, 3], [4, 0, 1, 2]]
    assert report["latency_repeats_b1"] == 5  # one round per example even though repeats=3
    assert report["latency_repeats_b32"] == 3 and report["latency_examples"] == 5
    # Teacher and student saw the same examples, in the same order (interleaved rounds).
    assert seen_t == seen_s
    # The five batch-1 rounds: each example run twice in a row (untimed, then timed).
    rounds_b1 = [rows for rows in seen_t if len(rows) == 1][-10:]
    assert rounds_b1[0::2] == rounds_b1[1::2]
    assert [r[0] for r in rounds_b1[1::2]] == key[:5]
    # MACs per example are the mean over the five single examples (they differ in length).
    from pakd_hf.measure import count_macs

    singles = [make([i]) for i in range(5)]
    expected = sum(count_macs(student, x) for x in singles) / 5
    assert report["macs_student"] == round(expected)


def test_rounds_go_on_for_the_minimum_time():
    model = tiny_bert(layers=1)
    x = {"input_ids": torch.tensor(toy_dataset(1)["input_ids"])}
    # A second: two rounds of a 1-layer toy model (four passes) take far less, even on a loaded machine.
    _, rounds = interleaved_latency({"m": (model, x)}, warmup=1, repeats=2, min_seconds=1.0)
    assert rounds > 2
    _, rounds = interleaved_latency({"m": (model, [x, x, x])}, warmup=1, repeats=2)
    assert rounds == 3


def test_in_fresh_process_runs_elsewhere_and_reports_failures():
    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(dict, teacher=1, student=2) == {"teacher": 1, "student": 2}
    with pytest.raises(RuntimeError, match="(?s)failed in a fresh process.*/no/such/pakd-folder"):
        in_fresh_process(os.stat, path="/no/such/pakd-folder")


def test_median_run_keeps_consistent_numbers_from_the_median_process():
    def run(t1, s1, t32, s32):
        return {"params_teacher": 10, "latency_ms_b1_teacher": t1, "latency_ms_b1_student": s1, "speedup_b1": t1 / s1,
                "latency_repeats_b1": int(t1), "latency_ms_b32_teacher": t32, "latency_ms_b32_student": s32,
                "speedup_b32": t32 / s32, "latency_repeats_b32": 20}

    runs = [run(20, 4, 300, 30), run(28, 3.5, 320, 20), run(24, 4.4, 310, 25)]
    merged = median_run(runs)
    # batch 1: speedups 5.0, 8.0, 5.45 -> the third run; batch 32: 10, 16, 12.4 -> the third too
    assert (merged["latency_ms_b1_teacher"], merged["latency_ms_b1_student"], merged["latency_repeats_b1"]) == (24, 4.4, 24)
    assert merged["speedup_b1"] == pytest.approx(24 / 4.4) and merged["speedup_b1_runs"] == [5.0, 8.0, 24 / 4.4]
    assert merged["speedup_b32"] == pytest.approx(310 / 25) and merged["latency_processes"] == 3
    runs[2]["latency_ms_b32_student"], runs[2]["speedup_b32"] = 40, 310 / 40  # now 10, 16, 7.75 -> the first
    assert median_run(runs)["latency_ms_b32_student"] == 30
    assert median_run(runs[:2])["speedup_b1"] == 5.0  # even count: the lower middle
    assert median_run(runs[:1])["latency_processes"] == 1
    with pytest.raises(ValueError):
        median_run([])


def test_the_latencies_run_on_the_device_asked_for():
    """Both models and every timed batch go to ``device`` (the meta device stands in for an
    accelerator here: same moves, no arithmetic); MACs are counted on the CPU copies first."""
    class Bag(torch.nn.Module):  # BERT's forward calls .item(), which a meta tensor cannot answer
        def __init__(self, width):
            super().__init__()
            self.embed, self.out = torch.nn.Embedding(64, width), torch.nn.Linear(width, 2)

        def forward(self, input_ids, attention_mask):
            return self.out(self.embed(input_ids).mean(1))

    data = toy_dataset(8, seed=3)
    seen = []
    teacher, student = Bag(32), Bag(8)
    for model in (teacher, student):
        model.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["input_ids"].device.type), with_kwargs=True)

    def make(indices):
        rows = data[indices]
        return {"input_ids": torch.tensor(rows["input_ids"]), "attention_mask": torch.tensor(rows["attention_mask"])}

    report = compare_models(teacher, student, make, threads=1, warmup=1, repeats=2, examples=3, batch_sizes=(1, 2),
                            device="meta")
    assert report["benchmark_device"] == "meta" and report["macs_student"] > 0
    first_meta = seen.index("meta")
    assert set(seen[:first_meta]) == {"cpu"} and set(seen[first_meta:]) == {"meta"}  # MACs on CPU, then every timed run
    assert next(teacher.parameters()).device.type == "meta"


def test_a_device_that_is_not_here_is_one_line_before_any_work(tmp_path, capsys):
    from pathlib import Path

    from pakd_hf.benchmark import check_device
    from pakd_hf.cli import main

    assert check_device("cpu") == "cpu"
    for device, fragment in (("tpu9", "is not a device"), ("meta", "is not cpu, cuda"),
                             *([] if torch.cuda.is_available() else [("cuda", "no CUDA device")])):
        with pytest.raises(ValueError, match=fragment):
            check_device(device)
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "nlp" / "minilm-rotten-tomatoes.yaml"
    assert main(["compress", str(recipe), "--output-dir", str(tmp_path / "out"), "--benchmark-device", "tpu9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'--benchmark-device'" in err[0] and not (tmp_path / "out").exists()
    assert main(["benchmark", str(tmp_path), str(tmp_path), "--runtime", "ort", "--device", "cuda"]) == 2
    assert "--device is for --runtime torch" in capsys.readouterr().err
