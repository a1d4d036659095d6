"""What a model carries for pakd between modules, in one place: three attributes set on the
model object itself (so they travel with it through Trainer, accelerate and user code, and
never reach its state_dict or config).

- the structure record (:class:`~pakd_hf.arch.structure.Structure`): which original units a pruned
  model kept, in original coordinates (set by compaction, read by importance, export, the
  trainer);
- the active mask state (:class:`~pakd_hf.prune.masks.MaskState`): the masks whose forward patches are
  on the model now (set by ``attach``, read by compaction and saving, which refuse a model
  that still has structural masks);
- the vocabulary record (:class:`~pakd_hf.prune.vocab.VocabPruneResult`): a student whose vocabulary was
  pruned before training (the trainer maps its ids back to the teacher's).

Every other module goes through these functions; none spells the attribute names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: `import pakd_hf` (export's registration) reads these without torch
    from torch import nn

__all__ = [
    "structure_record", "set_structure_record", "active_masks", "set_active_masks", "clear_active_masks",
    "vocabulary_record", "set_vocabulary_record",
]  # fmt: skip

_STRUCTURE = "_pakd_structure"
_MASKS = "_pakd_mask_state"
_VOCABULARY = "_pakd_vocabulary"


def _set(model: nn.Module, name: str, value: Any) -> None:
    # object.__setattr__: nn.Module.__setattr__ would register a Module value as a submodule
    if value is None:
        if name in model.__dict__:
            object.__delattr__(model, name)
    else:
        object.__setattr__(model, name, value)


def structure_record(model: nn.Module):
    """The Structure a pruned model carries (None for a model pakd never compacted)."""
    return getattr(model, _STRUCTURE, None)


def set_structure_record(model: nn.Module, structure) -> None:
    _set(model, _STRUCTURE, structure)


def active_masks(model: nn.Module):
    """The MaskState attached to the model now, or None."""
    return getattr(model, _MASKS, None)


def set_active_masks(model: nn.Module, state) -> None:
    _set(model, _MASKS, state)


def clear_active_masks(model: nn.Module, state) -> None:
    """Forget ``state`` as the model's active masks (another state stays)."""
    if active_masks(model) is state:
        _set(model, _MASKS, None)


def vocabulary_record(model: nn.Module):
    """The VocabPruneResult of a vocabulary pruned before training, or None."""
    return getattr(model, _VOCABULARY, None)


def set_vocabulary_record(model: nn.Module, result) -> None:
    _set(model, _VOCABULARY, result)


def embedding_rows(model: nn.Module) -> int | None:
    """The rows of ``model``'s input embedding now (its vocabulary after any pruning), or None
    for a model without one (images, audio)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(emb, "num_embeddings", None)
