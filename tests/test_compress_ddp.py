"""`pakd compress` under torchrun with 2 CPU processes (gloo) against the same recipe in one
process with the same global batch: the same student, one writer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from toy import launcher_failure, tiny_rt_recipe, tiny_text_teacher, with_repo_on_path

TESTS = Path(__file__).resolve().parent


def recipe(teacher: Path, per_process_batch: int) -> dict:
    """The main NLP recipe's shape on a tiny teacher, without what cannot match across process
    counts: no dropout (each process draws its own masks), no length-grouped batches (their
    grouping depends on the per-process batch), hidden cut by coordinates (a rotation is
    calibrated on each process's own batches), and no step that moves a student which still is
    its teacher. There the transfer set's loss (distillation only, no labels) is zero and its
    gradients are round-off, which differs with the per-process batch on some CPUs (another
    GEMM blocking): Adam turns it into steps of a tenth of the learning rate or more, and Taylor
    scores into arbitrary picks. So the first stage's first step has learning rate 0 (warmup;
    its round-off still enters AdamW's moments, negligible beside the real gradients after it)
    and cuts once after it by magnitude; the second stage ranks by Taylor on real gradients."""
    spec = tiny_rt_recipe(teacher, copies=1)
    spec["teacher"]["fine_tune"]["batch_size"] = per_process_batch
    spec["training"].update(batch_size=per_process_batch, group_by_length=False)
    spec["stages"][0]["warmup_ratio"] = 0.1  # --quick: 1 of its 8 steps
    spec["stages"][0]["pruning"].update(importance="magnitude", schedule="one-shot")
    spec["stages"][1]["pruning"]["hidden"] = {"keep": 16}
    return spec


def run(tmp_path: Path, name: str, teacher: Path, processes: int):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe(teacher, 16 // processes)))
    out, reports = tmp_path / name, tmp_path / f"{name}-ranks"
    env = {**with_repo_on_path(), "OMP_NUM_THREADS": "1"}
    command = ["compress", str(path), "--output-dir", str(out), "--quick", "--threads", "1",
               "--use_cpu", "true"]  # gloo processes, also on a machine with one GPU
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    if processes == 1:
        launcher = [sys.executable]
    proc = subprocess.run([*launcher, str(TESTS / "ddp_compress.py"), str(reports), "--", *command], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, launcher_failure(proc.stderr)
    ranks = [json.loads(p.read_text()) for p in sorted(reports.glob("rank-*.json"))] if processes > 1 else []
    return out, proc.stderr, ranks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp-compress")
    teacher = tiny_text_teacher(tmp / "teacher", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    one = run(tmp, "one", teacher, 1)
    two = run(tmp, "two", teacher, 2)
    return one, two


def test_two_processes_make_the_student_of_one_with_the_same_global_batch(runs):
    (one, _, _), (two, _, _) = runs
    config = [json.loads((out / "student" / "config.json").read_text()) for out in (one, two)]
    assert config[0] == config[1]  # the same structure: every pruning decision agreed
    weights = [load_file(str(out / "student" / "model.safetensors")) for out in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert value.shape == weights[1][key].shape, key
        # Float sums in another order (the gradient all-reduce) over a few dozen Adam steps.
        if key.endswith("word_embeddings.weight"):
            # A token seen once or twice gets Adam steps scaled by its own tiny second moment, which
            # magnify those differences: a few rows move by up to a fifth of a step (lr 1e-3).
            rows = (value - weights[1][key]).abs().amax(1)
            assert rows.max() < 5e-4 and (rows > 1e-5).float().mean() < 0.02, (key, rows.max(), (rows > 1e-5).sum())
            continue
        assert torch.allclose(value, weights[1][key], atol=1e-4), (key, (value - weights[1][key]).abs().max())
    teachers = [load_file(str(out / "teacher" / "model.safetensors")) for out in (one, two)]
    assert all(torch.allclose(teachers[0][k], teachers[1][k], atol=1e-4) for k in teachers[0])
    reports = [json.loads((out / "report.json").read_text()) for out in (one, two)]
    assert abs(reports[0]["accuracy_student"] - reports[1]["accuracy_student"]) <= 1 / reports[0]["n_eval"] + 1e-9
    assert (reports[0]["processes"], reports[1]["processes"]) == (1, 2)
    assert reports[1]["reproduce"].startswith("torchrun --nproc_per_node 2 $(which pakd) compress ")


def test_only_the_main_process_writes_and_speaks(runs):
    (one, _, _), (two, log, ranks) = runs
    assert [r["code"] for r in ranks] == [0, 0]
    main_writes, other_writes = ranks[0]["written"], ranks[1]["written"]
    # The other process creates only the checkpoint folders Trainer saves its own RNG state
    # into (Trainer's per-process state); everything else in OUT comes from the main process.
    assert all(Path(p).parent == two / ".student-run" and Path(p).name.startswith("checkpoint-")
               for p in other_writes), other_writes
    assert any(p.endswith("report.json") for p in main_writes) and any("student" in p for p in main_writes)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert log.count("[pakd] teacher saved in") == 1 and log.count("[pakd] transfer set:") >= 1
    assert "[pakd] 2 processes: every one trains" in log


def test_more_cuda_processes_than_gpus_is_one_line(tmp_path, monkeypatch, capsys):
    """Seen on a one-GPU machine: the second of two CUDA processes failed deep in accelerate
    ("invalid device ordinal"). `pakd compress` says so in one line before any work, as process
    1 of 2 on a machine whose CUDA has one GPU would; CPU processes are not refused."""
    import pakd_hf.arguments as arguments
    from pakd_hf.cli import main
    from pakd_hf.errors import LaunchError
    from pakd_hf.pipeline.processes import check_devices_fit

    for name, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(arguments, "default_device_flags", lambda: [])  # what a machine with CUDA gives
    out = tmp_path / "out"
    assert main(["compress", str(TESTS.parent / "recipes/nlp/minilm-rotten-tomatoes.yaml"), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 processes on this machine but 1 GPU(s)" in err[0] and "--use_cpu true" in err[0], err
    assert not out.exists()
    check_devices_fit(True)  # CPU processes (gloo) need no GPU
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    check_devices_fit(False)
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_devices_fit(False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LaunchError):
        check_devices_fit(False)
