"""A pruned model's structure record on disk and on the model object.

``pakd.json`` writing and reading, :func:`set_structure` / :func:`load_structure` (attach a saved
record to a reloaded model), :func:`save_pruned`, and :func:`verify_against_config`, which checks
a saved folder's tensor shapes against its ``config.json`` (and ``pakd.json``) without loading a
model. The record itself, :class:`~pakd_hf.arch.structure.Structure`, is in ``arch/``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..arch import adapter_class_for_model_type, get_adapter
from ..arch.structure import Structure
from ..carried import active_masks, set_structure_record

PAKD_JSON = "pakd.json"
PAKD_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A saved folder whose tensors contradict its config.json or pakd.json."""


def set_structure(model, structure: Structure | None) -> None:
    """Attach a structure record to ``model`` (e.g. after reloading a pruned checkpoint)."""
    set_structure_record(model, None if structure is None else copy.deepcopy(structure))


# ---------------------------------------------------------------- pakd.json
def write_pakd_json(folder, structure: Structure, *, architecture: str, family: str,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/pakd.json`` = {"format": 1, "architecture", "family", "structure", **extra}."""
    rec = {"format": PAKD_FORMAT, "architecture": architecture, "family": family,
           "structure": structure.to_dict()}
    for k, v in (extra or {}).items():
        if k in rec:
            raise ValueError(f"pakd.json key {k!r} is reserved")
        rec[k] = v
    path = Path(folder) / PAKD_JSON
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return path


def read_pakd_json(folder) -> dict[str, Any]:
    """The raw ``pakd.json`` dict (``format`` checked); see :func:`load_structure`."""
    path = Path(folder) / PAKD_JSON
    rec = json.loads(path.read_text())
    if rec.get("format") != PAKD_FORMAT:
        raise CheckpointMismatchError(f"{path}: unknown pakd.json format {rec.get('format')!r} (expected 1)")
    return rec


def load_structure(folder) -> Structure:
    return Structure.from_dict(read_pakd_json(folder)["structure"])


def save_pruned(model, folder, *, extra: dict[str, Any] | None = None, **save_kwargs) -> Path:
    """``model.save_pretrained(folder)`` + ``pakd.json`` + :func:`verify_against_config`.

    The model must be compacted (no masks installed); its config must describe it (a stock
    ``from_pretrained`` reloads the folder).
    """
    adapter = get_adapter(model)
    structure = Structure.from_model(model, adapter)
    state = active_masks(model)
    if state is not None and state.target != state.base:
        raise ValueError("the model still has structural masks: compact(model, mask_state) before saving "
                         "(unstructured / N:M masks are fine: they are saved as dense zeros)")
    folder = Path(folder)
    model.save_pretrained(folder, **save_kwargs)
    write_pakd_json(folder, structure, architecture=type(model).__name__, family=adapter.family, extra=extra)
    verify_against_config(folder)
    return folder


def tensor_shapes(folder: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointMismatchError(f"{folder}: no *.safetensors file")
    shapes: dict[str, list[int]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                shapes[k] = list(fh.get_slice(k).get_shape())
    return shapes


def verify_against_config(folder) -> None:
    """Raise :class:`CheckpointMismatchError` when the saved tensors contradict ``config.json``
    (per-layer q/o/FFN shapes, layer count, hidden width) or, when present, ``pakd.json``
    (kept layer/head/FFN/hidden counts, uniformity). Reads shapes with ``safe_open``; no model
    is built."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    cls = adapter_class_for_model_type(config.get("model_type", "?"))
    problems = [f"config.json vs tensors: {p}" for p in cls.checkpoint_problems(config, tensor_shapes(folder))]
    if (folder / PAKD_JSON).exists():
        rec = read_pakd_json(folder)
        s = Structure.from_dict(rec["structure"])
        if rec.get("family") not in (None, cls.family):
            problems.append(f"pakd.json family {rec.get('family')!r} but config model_type {config['model_type']!r}")
        problems += cls.structure_problems(config, s)  # default: uniform counts == the config's fields
    if problems:
        raise CheckpointMismatchError(f"{folder}: " + "; ".join(problems))
