"""Checkpoints that are complete or refused.

Trainer writes a checkpoint in several steps (weights, optimizer, scheduler, RNG, trainer
state) and PaKDTrainer adds its own state after them (stage, structure, masks, importance,
distillation projections). A kill between any two leaves a folder that looks like a
checkpoint and resumes into a different run. So a PaKD checkpoint counts only once
``pakd_checkpoint.json`` is on disk: written last, atomically, listing every file of the
checkpoint with its size. Resuming verifies it (every listed file there, at its size) and
refuses, with one line, a checkpoint without it or with a file missing or truncated;
``resume_from_checkpoint=True`` takes the newest complete checkpoint and names the ones it
skipped. Older checkpoints are rotated (``save_total_limit``) only after the new one is
complete, so a kill at any moment leaves the last complete checkpoint in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["MARKER", "STATE_FILENAME", "PROJECTIONS_FILENAME", "IncompleteCheckpointError", "mark_complete", "problem",
           "complete_checkpoints", "resolve", "rotate", "is_checkpoint_folder", "write_state", "read_state", "read_projections"]

MARKER = "pakd_checkpoint.json"
STATE_FILENAME = "pakd_state.json"  # the stage, the recipe's fingerprint, pruning's state
PROJECTIONS_FILENAME = "pakd_distill_projections.safetensors"
_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class IncompleteCheckpointError(ValueError):
    """A checkpoint that cannot be resumed (one line: which, why, what to do instead)."""


def is_checkpoint_folder(path: str | os.PathLike) -> bool:
    return _NAME.match(Path(path).name) is not None


def _step(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def mark_complete(folder: str | os.PathLike, global_step: int) -> None:
    """Write the marker last: every other file of ``folder`` (recursively) with its size,
    flushed to disk first, then the marker through a temporary file and a rename."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MARKER and not path.name.startswith(f".{MARKER}"):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[str(path.relative_to(folder))] = path.stat().st_size
    tmp = folder / f".{MARKER}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": 1, "complete": True, "global_step": global_step, "files": files}, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MARKER)
    _fsync_dir(folder)


def problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    try:
        record = json.loads((folder / MARKER).read_text())
        files = record["files"]
        if not isinstance(files, dict) or not all(isinstance(v, int) for v in files.values()):
            raise TypeError
    except FileNotFoundError:
        return f"no {MARKER}: its save was interrupted (or another program wrote it)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MARKER} is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size:,} bytes, {size:,} when the checkpoint was saved"
    return None


def _checkpoints(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.iterdir() if p.is_dir() and is_checkpoint_folder(p)), key=_step)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints under ``run_dir``, oldest first."""
    return [p for p in _checkpoints(Path(run_dir)) if problem(p) is None]


def resolve(resume: bool | str | os.PathLike | None, run_dir: str | os.PathLike) -> tuple[str | None, list[str]]:
    """The checkpoint to resume from, and notes on incomplete ones skipped.

    ``True``: the newest complete checkpoint under ``run_dir`` (an error when there is none);
    a path: that checkpoint, if complete, else an error naming the newest complete one."""
    if resume is None or resume is False:
        return None, []
    run_dir = Path(run_dir)
    if resume is True:
        skipped = []
        for path in reversed(_checkpoints(run_dir)):
            why = problem(path)
            if why is None:
                return str(path), skipped
            skipped.append(f"{path.name}: {why}")
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise IncompleteCheckpointError(f"no complete checkpoint in {run_dir}{detail}: start without resume_from_checkpoint")
    path = Path(resume)
    why = problem(path)
    if why is None:
        return str(path), []
    complete = complete_checkpoints(path.parent)
    instead = (f"resume from {complete[-1]} (the newest complete one) or start over" if complete
               else "start over (there is no complete checkpoint beside it)")
    raise IncompleteCheckpointError(f"checkpoint {path} cannot be resumed: {why}; {instead}")


def rotate(current: str | os.PathLike, limit: int | None, keep: str | os.PathLike | None = None) -> None:
    """After ``current`` is marked complete: keep it and the complete checkpoints before it, up
    to ``limit`` in all (and ``keep``, e.g. the best one); remove older checkpoint folders,
    complete or not. Checkpoints of later steps belong to a run this one resumed before: they
    are removed too, so that a later resume cannot pick one of them."""
    current = Path(current)
    step = _step(current)
    for path in _checkpoints(current.parent):
        if _step(path) > step and path != (Path(keep) if keep is not None else None):
            shutil.rmtree(path, ignore_errors=True)
    if not limit or limit <= 0:
        return
    earlier = [p for p in complete_checkpoints(current.parent) if _step(p) <= step]
    kept = set(earlier[-limit:]) | {current} | ({Path(keep)} if keep is not None else set())
    for path in _checkpoints(current.parent):
        if path not in kept and _step(path) < step:
            shutil.rmtree(path, ignore_errors=True)


def write_state(folder: str | os.PathLike, state: dict, projections=None) -> None:
    """PaKD's state in a checkpoint: ``state`` as ``pakd_state.json`` and the hidden-distillation
    ``projections`` (a module, or None) as safetensors. Before :func:`mark_complete`."""
    Path(folder, STATE_FILENAME).write_text(json.dumps(state, indent=2) + "\n")
    if projections is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()}
        save_file(tensors, os.path.join(folder, PROJECTIONS_FILENAME))


def read_state(folder: str | os.PathLike) -> dict:
    """The state :func:`write_state` wrote (``{}`` for a checkpoint without one)."""
    state_file = Path(folder, STATE_FILENAME)
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def read_projections(folder: str | os.PathLike, projections) -> None:
    """Load the projections' tensors :func:`write_state` wrote into ``projections`` (when both are there).

    Read on the CPU: ``load_state_dict`` copies them onto the device the projections live on
    (safetensors refuses a device string such as ``cpu:0``, which a distributed CPU run has)."""
    proj_file = Path(folder, PROJECTIONS_FILENAME)
    if projections is not None and proj_file.is_file():
        projections.load_state_dict(load_file(str(proj_file)))
