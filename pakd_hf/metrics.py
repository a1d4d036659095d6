"""The metrics pakd-hf reports, as `evaluate` modules that work offline.

`evaluate.load("accuracy")` fetches the metric's script from the Hub, which an offline run
cannot do; a subclass of `evaluate.Metric` defined here computes the same thing with the same
interface (`add_batch` / `compute`), so reports, ablations and cards use one definition, and a
user can pass `compute_accuracy` to `Trainer(compute_metrics=...)`.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

__all__ = ["Accuracy", "accuracy", "compute_accuracy"]


class Accuracy(evaluate.Metric):
    """Share of predictions equal to their reference (class ids)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy: the share of predicted class ids equal to the reference ids.",
            citation="",
            inputs_description="predictions: predicted class ids; references: gold class ids (same length).",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else 0.0}


def accuracy(predictions, references) -> float:
    """Accuracy of class-id ``predictions`` against ``references`` (in memory, no cache files)."""
    return Accuracy(keep_in_memory=True).compute(predictions=list(predictions), references=list(references))["accuracy"]


def compute_accuracy(eval_pred) -> dict[str, float]:
    """For `Trainer(compute_metrics=compute_accuracy)`: logits (or predictions) -> {"accuracy": ...}."""
    logits, labels = eval_pred
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = np.asarray(logits)
    predictions = logits.argmax(-1) if logits.ndim > 1 else logits
    return {"accuracy": accuracy(predictions.reshape(-1).tolist(), np.asarray(labels).reshape(-1).tolist())}
