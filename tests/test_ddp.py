"""A distillation recipe under torchrun with 2 CPU processes (gloo)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from toy import launcher_failure, with_repo_on_path

TESTS = Path(__file__).resolve().parent


def torchrun(tmp_path, mode, resume=False):
    out, reports = tmp_path / "out", tmp_path / ("reports-resumed" if resume else "reports")
    env = {**with_repo_on_path(), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(TESTS / "ddp_distill.py"), str(out), str(reports), mode, *(["resume"] if resume else []),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, launcher_failure(proc.stderr)
    return out, [json.loads((reports / f"rank-{i}.json").read_text()) for i in (0, 1)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted torchrun per mode, made the first time a test asks for it and shared:
    tests only read it (a resume test works on a copy)."""
    runs = {}

    def run(mode):
        if mode not in runs:
            runs[mode] = torchrun(tmp_path_factory.mktemp(f"ddp-{mode}"), mode)
        return runs[mode]

    return run


def test_torchrun_two_processes_identical_students_and_one_writer(uninterrupted):
    out, (r0, r1) = uninterrupted("distil")
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
    # ddp_distill.py holds process 0 back before this save: both ranks' RNG states are still there.
    assert {p.name for p in (out / "checkpoint-4").glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}


def test_torchrun_pruning_takes_the_same_decisions_on_every_rank(tmp_path):
    """With two micro-batches per step (bf16): the first of each window skips DDP's all-reduce,
    also after a compaction replaced the DDP wrapper; accelerate lists the student once and its
    forward is wrapped in autocast once."""
    out, (r0, r1) = torchrun(tmp_path, "prune-ga")
    assert r0["masks"] and r0["masks"] == r1["masks"]
    assert len(r0["masks"][-1]["layers"]) == 2 and len(r0["masks"][-1]["hidden"]) == 16
    assert r0["shapes"] == r1["shapes"]
    assert r0["shapes"]["bert.embeddings.word_embeddings.weight"][1] == 16
    assert r0["student_sha"] == r1["student_sha"] and r0["projections_sha"] == r1["projections_sha"]
    assert (out / "pakd.json").is_file()
    for report in (r0, r1):
        syncs = report["syncs"]
        assert len(syncs) == 2 * 6 and [s["last"] for s in syncs] == [False, True] * 6
        assert all(s["all_reduces"] == s["last"] for s in syncs), syncs
        assert all(s["current_wrapper"] for s in syncs)
        # the first stage's compaction (after step 3) re-wrapped the student: the micro-batches
        # after it ran on the new wrapper, its first ones under no_sync too, and the student's
        # forward kept the one autocast layer it had before (bf16)
        first, second = syncs[0]["wrapper"], syncs[-1]["wrapper"]
        assert first != second and [s["wrapper"] == second for s in syncs] == [False] * 6 + [True] * 6
        assert syncs[0]["forward_layers"] > 0 and len({s["forward_layers"] for s in syncs}) == 1, syncs
        assert report["models_listed"] == [True]


def test_torchrun_rotation_gives_every_rank_the_same_rotated_student(tmp_path):
    """Each rank measures the stream on its own shard of the batches; all keep rank 0's rotation."""
    out, (r0, r1) = torchrun(tmp_path, "rotate")
    assert r0["rotation"] is not None and (r0["rotation"]["width_before"], r0["rotation"]["width_after"]) == (32, 16)
    assert r0["shapes"] == r1["shapes"] and r0["shapes"]["bert.embeddings.word_embeddings.weight"][1] == 16
    assert r0["student_sha"] == r1["student_sha"] and r0["projections_sha"] == r1["projections_sha"]
    assert json.loads((out / "pakd.json").read_text())["hidden_rotation"]["width_after"] == 16


@pytest.mark.parametrize("mode", ["distil", "prune", "weighted"])
def test_torchrun_resume_continues_the_run_exactly(tmp_path, mode, uninterrupted):
    """A second torchrun in the same folder resumes from checkpoint-4 (in the hidden-state stage;
    with pruning, after the first stage compacted the student; with weighted draws, inside the
    second epoch, whose draw must be that epoch's): both ranks end with the weights and
    projections of the uninterrupted run, restored from rank 0's PaKD state and each rank's own
    RNG state."""
    done, (first, _) = uninterrupted(mode)
    out = shutil.copytree(done, tmp_path / "out")  # torchrun(tmp_path, ...) trains in tmp_path / "out"
    shutil.rmtree(out / "checkpoint-6")  # the final step's checkpoint: as if the run had stopped after step 4's
    _, (r0, r1) = torchrun(tmp_path, mode, resume=True)
    assert r0["global_step"] == r1["global_step"] == 6
    assert r0["shapes"] == first["shapes"]
    assert r0["student_sha"] == r1["student_sha"] == first["student_sha"]
    assert r0["projections_sha"] == r1["projections_sha"] == first["projections_sha"]



def test_torchrun_weighted_draws_split_one_sequence_between_the_processes(uninterrupted):
    """With train_sample_weights every process builds the same seeded sampler and accelerate
    hands its batches out in turn: the two ranks together train on the one weighted sequence of
    each epoch."""
    import torch

    from pakd_hf.sampling import EpochWeightedSampler, balanced_weights

    _, (r0, r1) = uninterrupted("weighted")
    assert r0["student_sha"] == r1["student_sha"]
    sampler = EpochWeightedSampler(torch.tensor(balanced_weights(["rare"] * 3 + ["common"] * 21)), seed=0)
    sequences = []
    for epoch in (0, 1):  # 24 rows: 6 batches of 4 an epoch, 3 steps per rank
        sampler.set_epoch(epoch)
        sequences.append(list(sampler))
    assert sequences[0] != sequences[1]
    for rank, report in enumerate((r0, r1)):
        drawn = {int(step): rows for step, rows in report["drawn"].items()}
        assert sorted(drawn) == list(range(6))
        for step, rows in drawn.items():
            start = (2 * (step % 3) + rank) * 4
            assert rows == sequences[step // 3][start : start + 4], (rank, step)
    rare = sum(i < 3 for r in (r0, r1) for rows in r["drawn"].values() for i in rows)
    assert rare >= 14  # the first 3 of 24 rows make about half of the 48 draws, not an eighth
