"""Run by tests/test_ddp.py under `torchrun --nproc_per_node 2`: a distillation recipe on CPU (gloo).

Each rank writes a report (a hash of its final student weights, the paths it opened for
writing under the output folder) to REPORT_DIR/rank-N.json, outside the output folder.
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy import record_writes, refuse_device_barriers  # noqa: E402

out_dir, report_dir = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "distil"
resume = len(sys.argv) > 4 and sys.argv[4] == "resume"  # a second run in the same folder, from its newest checkpoint
rank = int(os.environ["RANK"])
written = record_writes(out_dir)
refuse_device_barriers()

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from pakd_hf import PaKDTrainer, PaKDTrainingArguments  # noqa: E402
from toy import tiny_bert, toy_dataset  # noqa: E402

recipe = {
    "name": "ddp",
    "task": "text-classification",
    "stages": [
        {"name": "logits", "steps": 3, "learning_rate": 1e-3, "distillation": {"alpha": 0.5}},
        {"name": "hidden", "steps": 3, "distillation": {"alpha": 0.5, "hidden": {"weight": 1.0}}},
    ],
}
args = PaKDTrainingArguments(
    output_dir=str(out_dir),
    per_device_train_batch_size=4,
    report_to=[],
    use_cpu=True,
    disable_tqdm=True,
    save_strategy="steps",
    save_steps=4,
    logging_steps=1,
    seed=0,
    # prune-ga: two micro-batches per optimizer step, the first under DDP's no_sync
    gradient_accumulation_steps=2 if mode == "prune-ga" else 1,
    bf16=mode == "prune-ga",  # accelerate wraps the student's forward in autocast at each prepare
)
teacher = tiny_bert(seed=0)
student = tiny_bert(hidden=16, layers=2, heads=2, ffn=32, seed=1)
if mode in ("prune", "prune-ga"):
    # Each rank starts from a differently initialised student: DDP broadcasts rank 0's weights,
    # and the pruning decisions must still agree (scores are summed across ranks).
    student = tiny_bert(seed=1)
    recipe["stages"][0]["pruning"] = {
        "heads": {"keep": 2}, "ffn": {"keep": 32}, "layers": {"keep": 2}, "hidden": {"keep": 16},
        "frequency": 1, "importance": "taylor",
    }
elif mode == "rotate":
    # The rotation's principal directions come from each process's own training batches
    # (different shards): every rank must still end up with process 0's rotated model.
    student = tiny_bert(seed=1)
    recipe["stages"][0]["pruning"] = {"heads": {"keep": 2}, "hidden": {"keep": 16, "method": "rotate", "calibration": 16},
                                      "frequency": 1, "importance": "taylor"}
data = toy_dataset(64)
weights = None
if mode == "weighted":
    # 24 rows, the first 3 drawn as often as the other 21 (balanced_weights of two groups): every
    # process must draw from the one weighted sequence, each its own batches of it; 3 steps an
    # epoch, so the 6 steps span two epochs and a resume from checkpoint-4 starts inside the second.
    from pakd_hf.sampling import balanced_weights

    data = toy_dataset(24)
    weights = balanced_weights(["rare"] * 3 + ["common"] * 21)
trainer = PaKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, recipe=recipe,
                      train_sample_weights=weights)
drawn = {}
if mode == "weighted":
    row_of = {tuple(r): i for i, r in enumerate(data["input_ids"])}
    assert len(row_of) == len(data)

    def record(module, args, kwargs, output):
        if module.training:
            drawn.setdefault(trainer.state.global_step, [row_of[tuple(r)] for r in kwargs["input_ids"].tolist()])

    student.register_forward_hook(record, with_kwargs=True)


class LateProcessZero(TrainerCallback):
    """Process 0 reaches the checkpoint save late, so the other rank writes its RNG state into
    checkpoint-4 first: process 0 must not then clear that folder as a stale one."""

    def on_step_end(self, args, state, control, **kwargs):
        if rank == 0 and state.global_step % args.save_steps == 0:
            time.sleep(1.0)


trainer.add_callback(LateProcessZero())
masks_seen, syncs = [], []
if mode in ("prune", "prune-ga"):
    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if trainer.pruning.mask_state is not None:
                masks_seen.append(trainer.pruning.mask_state.structure().to_dict())

    trainer.add_callback(Record())
if mode == "prune-ga":
    # For every micro-batch: whether it ends the accumulation window, and whether the wrapper that
    # runs it will all-reduce its gradients (DDP's no_sync clears require_backward_grad_sync).
    compute_loss = trainer.compute_loss

    def forward_layers(module):
        f, n = module.forward, 0
        while hasattr(f, "__wrapped__"):
            f, n = f.__wrapped__, n + 1
        return n

    def recording_compute_loss(model, inputs, *args, **kwargs):
        syncs.append({"step": trainer.state.global_step, "last": trainer.accelerator.sync_gradients,
                      "all_reduces": bool(getattr(model, "require_backward_grad_sync", True)),
                      "wrapper": id(model), "current_wrapper": model is trainer.model_wrapped,
                      "forward_layers": forward_layers(student)})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording_compute_loss
if resume and rank == 1:
    # A rank that cannot see the completion markers process 0 writes (storage not shared): it must
    # resume the step process 0 resolved, not look for itself.
    import pakd_hf.trainer

    def not_here(*args, **kwargs):
        raise AssertionError("only process 0 resolves the checkpoint to resume")

    pakd_hf.trainer.resolve = not_here
trainer.train(resume_from_checkpoint=True if resume else None)
trainer.save_model()
digest = hashlib.sha256()
for key, value in sorted(student.state_dict().items()):
    digest.update(key.encode())
    digest.update(value.detach().cpu().numpy().tobytes())
proj = hashlib.sha256()
for key, value in sorted(trainer.distill_projections.state_dict().items()):
    proj.update(value.detach().cpu().numpy().tobytes())
report = {
    "rank": rank,
    "world_size": int(os.environ["WORLD_SIZE"]),
    "trainer_world_size": trainer.args.world_size,
    "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    "student_sha": digest.hexdigest(),
    "projections_sha": proj.hexdigest(),
    "global_step": trainer.state.global_step,
    "written": sorted(set(written)),
    "masks": masks_seen,
    "shapes": {k: list(v.shape) for k, v in student.state_dict().items()},
    "rotation": trainer.pruning.rotation_record,
    "syncs": syncs,
    "drawn": drawn,
    "models_listed": [m is student for m in trainer.accelerator._models],  # what accelerate's save_state walks
}
report_dir.mkdir(parents=True, exist_ok=True)
(report_dir / f"rank-{rank}.json").write_text(json.dumps(report))
