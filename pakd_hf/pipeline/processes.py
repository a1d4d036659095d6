"""`pakd compress` in several processes (``torchrun --nproc_per_node N $(which pakd) compress
...``, ``accelerate launch``): every process trains, one writes.

Trainer already runs its training loop distributed (DDP through accelerate), and PaKDTrainer
keeps the pruning decisions identical on every process (its scores are reduced across them,
compaction and rotation follow process 0). What the pipeline adds around the training is who
does the rest:

- the data and the transfer set are made (and cached) by the main process first, then read
  from the cache by the others;
- the teacher's fine-tune is trained by every process together (its global batch is the
  recipe's batch times the number of processes, as for the stages), then the main process
  scores and saves it and the others read what it saved;
- the main process alone creates OUT's folders, decides whether the stages resume, evaluates,
  benchmarks, exports, writes the card and report and pushes; the other processes end with exit
  status 0 when the training ends (the launcher waits for the main one), so no barrier has to
  outlast a long benchmark, export or push, and they hold no memory meanwhile;
- the number of processes is part of the keys of the cached teacher and of the checkpoints a
  rerun resumes (N processes train with N times the recipe's batch), and report.json records it.

The process group is the one TrainingArguments sets up (accelerate's ``PartialState``, with the
user's ``--ddp_backend``/``--ddp_timeout``/``--use_cpu``), made here before any work so that the
data and teacher steps can already wait for each other. Those waits (:meth:`Processes.wait`,
:meth:`Processes.share`) use a second, gloo group without a practical timeout: the others may
wait longer than ``--ddp_timeout`` (30 minutes by default) while the main process synthesises
data, downloads, or runs the teacher over a large transfer set; if it fails instead, the
launcher ends them.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Any


def launched() -> bool:
    """Whether this process is one of several started by torchrun or accelerate launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """Process 0 (or the only process): the one that writes and speaks."""
    return int(os.environ.get("RANK", "0")) == 0


def check_devices_fit(use_cpu: bool) -> None:
    """Several CUDA processes need a GPU each (Trainer wraps the model in DDP with its process's
    GPU): with more processes on a machine than GPUs, a process failed deep in accelerate or torch
    ("CUDA error: invalid device ordinal", seen with two processes on one GPU). One line instead,
    before any work. Processes that train on the CPU (``--use_cpu``, accelerate's
    ``ACCELERATE_USE_CPU``, or a machine without CUDA) need none."""
    import torch
    from accelerate.utils import parse_flag_from_env

    from ..errors import LaunchError

    try:  # read as Trainer reads it
        use_cpu = use_cpu or parse_flag_from_env("ACCELERATE_USE_CPU")
    except ValueError:
        raise LaunchError(f"ACCELERATE_USE_CPU={os.environ['ACCELERATE_USE_CPU'][:20]!r} is not a truth value "
                          "(true or false)") from None
    if use_cpu or not torch.cuda.is_available():
        return
    here, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if here > gpus:
        raise LaunchError(f"{here} processes on this machine but {gpus} GPU(s): start at most one process per GPU "
                          "(torchrun --nproc_per_node, accelerate launch --num_processes), or add --use_cpu true to "
                          "train them on the CPU")


class Processes:
    """The processes of one `pakd compress` (one, unless launched by torchrun or accelerate).

    Holds no accelerate state: Trainer resets and rebuilds accelerate's shared state when it is
    created, so the counts and collectives here ask torch.distributed's process group, which
    lives as long as the process."""

    def __init__(self, distributed: bool = False):
        self.distributed = distributed
        self._group = None
        if distributed:
            from datetime import timedelta

            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo", timeout=timedelta(days=7))

    @classmethod
    def start(cls, overrides: dict[str, Any] | None) -> "Processes":
        """One process: nothing to set up. Several: the process group, as TrainingArguments
        (and so Trainer, later) sets it up for the user's TrainingArguments flags."""
        if not launched():
            return cls()

        from ..arguments import PaKDTrainingArguments, default_device_flags

        settings = {"use_cpu": bool(default_device_flags()), **(overrides or {})}
        check_devices_fit(settings["use_cpu"])
        args = PaKDTrainingArguments(**{"output_dir": tempfile.gettempdir(), "report_to": [], **settings})
        args.device  # noqa: B018 - sets up the process group (accelerate's PartialState)
        return cls(distributed=True)

    @property
    def count(self) -> int:
        if not self.distributed:
            return 1
        import torch.distributed as dist

        return dist.get_world_size()

    @property
    def is_main(self) -> bool:
        if not self.distributed:
            return True
        import torch.distributed as dist

        return dist.get_rank() == 0

    def wait(self) -> None:
        """A barrier: every process gets here before any goes on."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    @contextmanager
    def main_first(self):
        """The main process runs the block (and caches what it makes), then the others do. When
        the main process fails in the block, the others are left waiting: the launcher ends
        them when it sees the failure."""
        if not self.is_main:
            self.wait()
        yield
        if self.is_main:
            self.wait()

    def share(self, value: Any) -> Any:
        """The main process's ``value``, on every process (a barrier too)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]
