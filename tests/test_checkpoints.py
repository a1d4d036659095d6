"""Complete-or-refused checkpoints: PaKD's state and a marker written last, every missing or
truncated file refused in one line naming it, resume=True falling back to the newest complete
checkpoint, and older checkpoints rotated only after the new one is complete."""

import copy
import json
import shutil

import pytest
import torch

from pakd_hf import PaKDTrainer
from pakd_hf.checkpoints import MARKER, IncompleteCheckpointError, complete_checkpoints, problem
from test_prune_trainer import prune_recipe, targs
from toy import tiny_bert, toy_dataset

RECIPE = prune_recipe("text-classification", {"heads": {"keep": 2}, "hidden": {"keep": 16}, "ffn": {"keep_fraction": 0.5},
                                              "importance": "taylor"}, prune_steps=8, recover_steps=8)


def _trainer(out, **kw):
    return PaKDTrainer(model=tiny_bert(seed=0), teacher_model=tiny_bert(seed=5), train_dataset=toy_dataset(128),
                       recipe=RECIPE, args=targs(out, save_strategy="steps", save_steps=4, **kw))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpoints") / "run"
    trainer = _trainer(out, save_total_limit=2)
    trainer.train()
    return out, trainer


def test_every_checkpoint_is_marked_complete_with_its_files_and_older_ones_rotated(run):
    out, trainer = run
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-12", "checkpoint-16"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-12", "checkpoint-16"]
    assert trainer.args.save_total_limit == 2  # the user's limit is back after training
    record = json.loads((out / "checkpoint-12" / MARKER).read_text())
    assert record["complete"] is True and record["global_step"] == 12
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "pakd_state.json",
                 "pakd_distill_projections.safetensors", "pakd_recipe.yaml"):
        assert name in record["files"], name
    assert record["files"]["model.safetensors"] == (out / "checkpoint-12" / "model.safetensors").stat().st_size


def _damaged(out, tmp_path, name, how, checkpoint="checkpoint-16"):
    """A copy of the run folder ``out`` with ``name`` in ``checkpoint`` missing or cut in half."""
    copy_dir = tmp_path / "run"
    shutil.copytree(out, copy_dir)
    path = copy_dir / checkpoint / name
    if how == "missing":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return copy_dir


@pytest.mark.parametrize("how", ["missing", "truncated"])
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "trainer_state.json", "pakd_state.json",
                                  "pakd_distill_projections.safetensors", MARKER])
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_the_file(run, tmp_path, name, how):
    out = _damaged(run[0], tmp_path, name, how)
    trainer = _trainer(out)
    with pytest.raises(IncompleteCheckpointError) as info:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-16"))
    message = str(info.value)
    assert "\n" not in message and "checkpoint-16" in message and name in message
    assert f"resume from {out / 'checkpoint-12'}" in message  # the newest complete one, named
    assert trainer.state.global_step == 0  # refused before anything was loaded or trained


def test_resume_true_takes_the_newest_complete_checkpoint_and_says_which_it_skipped(run, tmp_path, caplog):
    out = _damaged(run[0], tmp_path, "model.safetensors", "truncated")
    reference = copy.deepcopy(run[1].model)
    trainer = _trainer(out)
    with caplog.at_level("WARNING", logger="pakd_hf.trainer"):
        trainer.train(resume_from_checkpoint=True)
    assert "checkpoint-16: model.safetensors is" in caplog.text
    # From checkpoint-12: the last four steps again, to the weights of the uninterrupted run. An AdamW
    # step at lr 2e-3 moves a weight by ~2e-3, so a lost optimizer state or a step too many shows as
    # ~1e-3; float summation-order noise after a compaction stays below 1e-4.
    assert trainer.state.global_step == 16
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], value, rtol=0, atol=2e-4, msg=name)
    # checkpoint-16 was written again, whole.
    assert problem(out / "checkpoint-16") is None


def test_a_kill_before_the_marker_keeps_the_older_checkpoints(tmp_path, monkeypatch):
    """Trainer's own rotation runs before PaKD's state is written; PaKDTrainer holds it back, so
    an interruption before the third checkpoint is marked leaves the first two in place."""
    import pakd_hf.trainer as trainer_module  # the name the trainer calls

    calls = []
    original = trainer_module.mark_complete

    def mark(folder, step):
        calls.append(step)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed here
        original(folder, step)

    monkeypatch.setattr(trainer_module, "mark_complete", mark)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _trainer(out, save_total_limit=1).train()
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-8"]
    assert (out / "checkpoint-12").is_dir() and problem(out / "checkpoint-12").startswith(f"no {MARKER}")
    monkeypatch.setattr(trainer_module, "mark_complete", original)
    trainer = _trainer(out, save_total_limit=1)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 16 and [p.name for p in complete_checkpoints(out)] == ["checkpoint-16"]


def test_no_checkpoint_at_all_is_one_line(tmp_path):
    with pytest.raises(IncompleteCheckpointError, match="no complete checkpoint in"):
        _trainer(tmp_path / "empty").train(resume_from_checkpoint=True)


def test_a_malformed_marker_is_refused_not_a_traceback(run, tmp_path):
    out, _ = run
    copy_dir = tmp_path / "run"
    shutil.copytree(out, copy_dir)
    (copy_dir / "checkpoint-16" / MARKER).write_text(json.dumps({"files": ["model.safetensors"]}))
    assert problem(copy_dir / "checkpoint-16") == f"{MARKER} is unreadable"
    with pytest.raises(IncompleteCheckpointError, match="unreadable"):
        _trainer(copy_dir).train(resume_from_checkpoint=str(copy_dir / "checkpoint-16"))


def test_resuming_from_an_earlier_checkpoint_drops_the_later_ones(run, tmp_path):
    """From checkpoint-12 while a complete checkpoint-16 exists: the run writes its own
    checkpoint-16, and with save_total_limit=1 that one (not the old) is what is left."""
    out, _ = run
    copy_dir = tmp_path / "run"
    shutil.copytree(out, copy_dir)
    old = json.loads((copy_dir / "checkpoint-16" / MARKER).read_text())
    trainer = _trainer(copy_dir, save_total_limit=1)
    trainer.train(resume_from_checkpoint=str(copy_dir / "checkpoint-12"))
    assert [p.name for p in complete_checkpoints(copy_dir)] == ["checkpoint-16"]
    assert (copy_dir / "checkpoint-16" / MARKER).stat().st_mtime_ns > 0 and problem(copy_dir / "checkpoint-16") is None
    assert json.loads((copy_dir / "checkpoint-16" / MARKER).read_text())["files"].keys() == old["files"].keys()


@pytest.fixture(scope="module")
def mid_prune(tmp_path_factory):
    """Checkpoints every 4 steps, all kept: checkpoint-4 is inside the pruning stage (importance
    scores and masks saved with it), checkpoint-8 at its end."""
    out = tmp_path_factory.mktemp("checkpoints-mid-prune") / "run"
    _trainer(out).train()
    return out


@pytest.mark.parametrize("how", ["missing", "truncated"])
@pytest.mark.parametrize("name", ["pakd_importance.safetensors", "scheduler.pt", "rng_state.pth"])
def test_a_damaged_checkpoint_inside_the_pruning_stage_is_refused(mid_prune, tmp_path, name, how):
    record = json.loads((mid_prune / "checkpoint-4" / MARKER).read_text())
    assert name in record["files"]  # saved with a checkpoint taken while the stage prunes
    copy_dir = _damaged(mid_prune, tmp_path, name, how, checkpoint="checkpoint-4")
    trainer = _trainer(copy_dir)
    with pytest.raises(IncompleteCheckpointError) as info:
        trainer.train(resume_from_checkpoint=str(copy_dir / "checkpoint-4"))
    assert "\n" not in str(info.value) and "checkpoint-4" in str(info.value) and name in str(info.value)
    assert trainer.state.global_step == 0


@pytest.fixture(scope="module")
def sparse_mid_prune(tmp_path_factory):
    """Unstructured sparsity: checkpoint-4, inside the pruning stage, carries the weight masks."""
    out = tmp_path_factory.mktemp("checkpoints-sparse") / "run"
    recipe = prune_recipe("text-classification", {"unstructured": {"sparsity": 0.5}, "frequency": 2}, prune_steps=8,
                          recover_steps=4)
    PaKDTrainer(model=tiny_bert(seed=0), teacher_model=tiny_bert(seed=5), train_dataset=toy_dataset(128), recipe=recipe,
                args=targs(out, save_strategy="steps", save_steps=4)).train()
    return out, recipe


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_a_checkpoint_without_its_weight_masks_is_refused(sparse_mid_prune, tmp_path, how):
    from pakd_hf.prune.session import MASKS_FILENAME

    out, recipe = sparse_mid_prune
    assert MASKS_FILENAME in json.loads((out / "checkpoint-4" / MARKER).read_text())["files"]
    copy_dir = _damaged(out, tmp_path, MASKS_FILENAME, how, checkpoint="checkpoint-4")
    trainer = PaKDTrainer(model=tiny_bert(seed=0), teacher_model=tiny_bert(seed=5), train_dataset=toy_dataset(128),
                          recipe=recipe, args=targs(copy_dir, save_strategy="steps", save_steps=4))
    with pytest.raises(IncompleteCheckpointError) as info:
        trainer.train(resume_from_checkpoint=str(copy_dir / "checkpoint-4"))
    assert "\n" not in str(info.value) and "checkpoint-4" in str(info.value) and MASKS_FILENAME in str(info.value)
    assert trainer.state.global_step == 0
