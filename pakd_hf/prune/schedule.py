"""How much to prune when: pure functions of the step (no torch).

``sparsity_at`` gives the pruned FRACTION at a step; ``keep_count`` turns it into a unit count;
``is_update_step`` says when masks are recomputed. Like torch.ao.pruning's schedulers these
know nothing about what is pruned.
"""

from __future__ import annotations

import math

SCHEDULES = ("one-shot", "linear", "cubic")


def sparsity_at(step: int, *, start: int, end: int, initial: float = 0.0, final: float, kind: str = "cubic") -> float:
    """The target sparsity (pruned fraction) at ``step``.

    - ``one-shot``: ``initial`` before ``start``, ``final`` from ``start`` on (``end`` unused).
    - ``linear``: ``initial + (final - initial) * (t - start) / (end - start)``.
    - ``cubic`` (Zhu & Gupta 2017): ``final + (initial - final) * (1 - (t - start)/(end - start))**3``.

    Before ``start`` -> ``initial``; from ``end`` on -> ``final`` (progress clamped to [0, 1]).
    Monotone non-decreasing in ``step`` when ``final >= initial``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule kind must be one of {SCHEDULES}, got {kind!r}")
    for name, v in (("initial", initial), ("final", final)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} sparsity must be in [0, 1], got {v}")
    if kind == "one-shot":
        return float(final) if step >= start else float(initial)
    if end < start:
        raise ValueError(f"end ({end}) must be >= start ({start})")
    if step < start:
        return float(initial)
    if step >= end:
        return float(final)
    progress = (step - start) / (end - start)
    if kind == "linear":
        return initial + (final - initial) * progress
    return final + (initial - final) * (1.0 - progress) ** 3


def keep_count(total: int, sparsity: float, *, minimum: int = 1, multiple_of: int = 1) -> int:
    """Units to keep out of ``total`` at ``sparsity``: ``ceil(total * (1 - sparsity))``, rounded
    UP to a multiple of ``multiple_of`` (capped at ``total``), never below ``minimum`` (1 head /
    neuron / layer by default).

    Non-increasing in ``sparsity``, so a non-decreasing schedule only ever removes units.
    """
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    k = math.ceil(total * (1.0 - sparsity) - 1e-9)
    if multiple_of > 1:
        k = math.ceil(k / multiple_of) * multiple_of
    return max(min(minimum, total), min(total, k))


def keep_count_at(total: int, step: int, *, start: int, end: int, initial: float = 0.0, final: float,
                  kind: str = "cubic", minimum: int = 1, multiple_of: int = 1) -> int:
    """``keep_count(total, sparsity_at(step, ...))``: e.g. heads to keep per layer at ``step``."""
    s = sparsity_at(step, start=start, end=end, initial=initial, final=final, kind=kind)
    return keep_count(total, s, minimum=minimum, multiple_of=multiple_of)


def is_update_step(step: int, start: int, end: int, frequency: int) -> bool:
    """True when masks should be recomputed at ``step``: ``start <= step <= end`` and
    ``(step - start) % frequency == 0``, plus ``end`` itself (so the final level is reached)."""
    if frequency <= 0:
        raise ValueError(f"frequency must be positive, got {frequency}")
    if step < start or step > end:
        return False
    return (step - start) % frequency == 0 or step == end
