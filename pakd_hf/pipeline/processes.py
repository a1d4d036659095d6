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
  benchmarks, exports, writes the card and report and pushes; the other processes wait for it
  at a barrier (bounded by ``--ddp_timeout``, 30 minutes by default) and end with exit status 0.

The process group is the one TrainingArguments sets up (accelerate's ``PartialState``, with the
user's ``--ddp_backend``/``--ddp_timeout``/``--use_cpu``), made here before any work so that the
data and teacher steps can already wait for each other.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any


def launched() -> bool:
    """Whether this process is one of several started by torchrun or accelerate launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """Process 0 (or the only process): the one that writes and speaks."""
    return int(os.environ.get("RANK", "0")) == 0


class Processes:
    """The processes of one `pakd compress` (one, unless launched by torchrun or accelerate)."""

    def __init__(self, state: Any = None):
        self.state = state  # accelerate's PartialState, or None for one process

    @classmethod
    def start(cls, overrides: dict[str, Any] | None) -> "Processes":
        """One process: nothing to set up. Several: the process group, as TrainingArguments
        (and so Trainer, later) sets it up for the user's TrainingArguments flags."""
        if not launched():
            return cls()
        import tempfile

        from ..arguments import PaKDTrainingArguments, default_device_flags

        args = PaKDTrainingArguments(**{"output_dir": tempfile.gettempdir(), "report_to": [],
                                        "use_cpu": bool(default_device_flags()), **(overrides or {})})
        args.device  # noqa: B018 - sets up the process group (accelerate's PartialState)
        return cls(args.distributed_state)

    @property
    def count(self) -> int:
        return 1 if self.state is None else self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    def wait(self) -> None:
        """A barrier: every process gets here before any goes on."""
        if self.state is not None:
            self.state.wait_for_everyone()

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
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]
