"""A training split whose batches come back randomly changed (recipe ``data.augment``).

The change is drawn anew for every batch, so every epoch shows the model different copies of
the same examples, and in a PaKD step the teacher reads the very batch the student reads
(Beyer et al., 2022, "consistent teaching"). Only the training split is wrapped; validation,
test and every score read the examples as they are. What changes is one encoded column (the
images' ``pixel_values``, the clips' ``input_features``): see ``image_augment.py`` and
``audio_augment.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["AugmentedSplit"]


class AugmentedSplit(Dataset):
    """``split`` with ``change`` applied to the batch tensor of ``column``; every other column
    as it is. Trainer reads it like the split itself (length, items, batches of items)."""

    def __init__(self, split, change: Callable[[torch.Tensor], torch.Tensor], column: str):
        self.split, self.change, self.column = split, change, column

    def __len__(self) -> int:
        return len(self.split)

    @property
    def column_names(self) -> list[str]:
        return list(self.split.column_names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One read and one tensor for the whole batch (torch's DataLoader asks for the batch's
        # indices at once through this method), then back to one dict per example for the collator.
        rows = self.split[list(indices)]
        changed = self.change(torch.as_tensor(rows[self.column]))
        return [{**{k: v[j] for k, v in rows.items() if k != self.column}, self.column: changed[j]}
                for j in range(len(indices))]
