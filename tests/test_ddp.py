"""A distillation recipe under torchrun with 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def test_torchrun_two_processes_identical_students_and_one_writer(tmp_path):
    out, reports = tmp_path / "out", tmp_path / "reports"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(TESTS / "ddp_distill.py"), str(out), str(reports),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((reports / f"rank-{i}.json").read_text()) for i in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and r0["trainer_world_size"] == 2
    assert r0["backend"] == "gloo"
    assert r0["global_step"] == r1["global_step"] == 6
    assert r0["student_sha"] == r1["student_sha"]
    assert r0["projections_sha"] == r1["projections_sha"]
    # Rank 1 only creates the checkpoint folders it saves its own RNG state into (Trainer's
    # per-process state); the model, config, recipe and PaKD state come from rank 0 alone.
    assert all(Path(p).parent == out and Path(p).name.startswith("checkpoint-") for p in r1["written"]), r1["written"]
    assert any(p.endswith("checkpoint-4/pakd_state.json") for p in r0["written"])
    assert str(out / "config.json") in r0["written"] and str(out / "pakd_recipe.yaml") in r0["written"]
    assert (out / "model.safetensors").is_file() and (out / "pakd_recipe.yaml").is_file()
    assert (out / "checkpoint-4" / "pakd_state.json").is_file()
