"""The structured-pruning engine, in separate concerns:

- :mod:`.structure`: the :class:`Structure` record (original coordinates), pakd.json,
  checkpoint verification;
- :mod:`.importance`: :class:`ImportanceAccumulator` (magnitude, taylor, movement);
- :mod:`.schedule`: how much when (one-shot, linear, cubic), pure functions;
- :mod:`.select`: scores + targets -> a new Structure (per-layer top-k, global budget);
- :mod:`.masks`: :class:`MaskState`, pruning as masks during a stage (+ unstructured, N:M);
- :mod:`.compact`: :func:`compact`, physical removal (rebuild the optimizer afterwards!).

Where things live in each model family: :mod:`pakd_hf.arch`. ``schedule`` itself imports no
torch (this package's ``__init__`` does).
"""

from ..arch import (
    HeadDimError,
    NonUniformStructureError,
    UnsupportedArchitectureError,
    get_adapter,
)
from .compact import CompactResult, compact  # the function shadows the submodule attribute
from .importance import ImportanceAccumulator
from .masks import MaskState, nm_masks, unstructured_masks, weight_scores
from .schedule import is_update_step, keep_count, keep_count_at, sparsity_at
from .select import select_global, select_structure, unit_costs
from .structure import (
    CheckpointMismatchError,
    Structure,
    load_structure,
    read_pakd_json,
    save_pruned,
    set_structure,
    verify_against_config,
    write_pakd_json,
)

__all__ = [
    "CheckpointMismatchError",
    "CompactResult",
    "HeadDimError",
    "ImportanceAccumulator",
    "MaskState",
    "NonUniformStructureError",
    "Structure",
    "UnsupportedArchitectureError",
    "compact",
    "get_adapter",
    "is_update_step",
    "keep_count",
    "keep_count_at",
    "load_structure",
    "nm_masks",
    "read_pakd_json",
    "save_pruned",
    "select_global",
    "select_structure",
    "set_structure",
    "sparsity_at",
    "unit_costs",
    "unstructured_masks",
    "verify_against_config",
    "weight_scores",
    "write_pakd_json",
]
