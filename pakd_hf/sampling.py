"""Drawing the training examples by weight (`PaKDTrainer(train_sample_weights=...)`, the recipe's
``training.balance_by``).

A training set is often lopsided in a way its labels do not show: most clips from one
synthesiser, most images from one camera, most texts from one source. Drawn uniformly, the
student sees the rare groups seldom and matches the teacher there least. Weighted draws give
each example a chance in proportion to its weight, with replacement; an epoch keeps its length,
so the stages' steps, schedules and budgets stay as they were.

The sampler is torch's ``WeightedRandomSampler``; what is added is its seed: the draw of an epoch
comes from ``(seed, epoch)`` alone (PaKDTrainer calls ``set_epoch`` at the start of every epoch).
So a run resumed from a checkpoint draws what the uninterrupted one drew, and every process of a
DDP run draws the same sequence, which accelerate then splits into per-process batches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["EpochWeightedSampler", "balanced_weights", "check_sample_weights"]

# torch.multinomial draws from at most 2**24 categories.
MAX_WEIGHTED_EXAMPLES = 2**24


def balanced_weights(values: Iterable[Hashable]) -> list[float]:
    """One weight per example such that every distinct value of ``values`` (a column: an
    engine, a source, a class) is drawn equally often: ``1 / (examples with that value)``."""
    values = list(values)
    counts = Counter(values)
    return [1.0 / counts[v] for v in values]


def check_sample_weights(weights: Sequence[float], examples: int | None, name: str = "train_sample_weights") -> torch.Tensor:
    """``weights`` as a float64 tensor, or a ValueError naming ``name`` and the fix: one weight
    per training example, each finite and >= 0, some > 0."""
    if examples is None:
        raise ValueError(f"{name}: the training set has no length (an IterableDataset): weighted draws need "
                         "one weight per example of a map-style data set")
    if examples > MAX_WEIGHTED_EXAMPLES:
        raise ValueError(f"{name}: weighted draws take at most {MAX_WEIGHTED_EXAMPLES:,} examples "
                         f"(torch.multinomial), the training set has {examples:,}")
    try:
        tensor = torch.as_tensor(weights, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: must be a sequence of numbers, one per training example ({exc})") from None
    if tensor.numel() != examples:
        raise ValueError(f"{name}: {tensor.numel():,} weights for {examples:,} training examples: give one per example")
    if not torch.isfinite(tensor).all() or (tensor < 0).any():
        bad = int((~torch.isfinite(tensor) | (tensor < 0)).nonzero()[0])
        raise ValueError(f"{name}: weight {bad} is {tensor[bad].item()}: every weight must be finite and >= 0")
    if not tensor.sum() > 0:
        raise ValueError(f"{name}: every weight is 0: at least one example must have a weight > 0")
    return tensor


class EpochWeightedSampler(WeightedRandomSampler):
    """``WeightedRandomSampler`` (with replacement, ``len(weights)`` draws an epoch) whose draw of
    an epoch depends on ``(seed, epoch)`` alone."""

    def __init__(self, weights: torch.Tensor, seed: int = 0):
        self.seed = int(seed)
        super().__init__(weights, num_samples=len(weights), replacement=True, generator=None)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        # A seed per (seed, epoch), spread so that neighbouring seeds do not share epochs' draws.
        self.generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63 - 1))

    def __iter__(self):
        # The epoch's draw, however many times it is iterated (a rebuilt dataloader, a resume).
        self.set_epoch(self.epoch)
        return super().__iter__()

