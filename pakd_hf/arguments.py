"""PaKDTrainingArguments: TrainingArguments plus the path of a recipe, nothing more.

Everything about stages, distillation and pruning lives in the recipe (data, versioned with
the result); everything about how to run (batch size, logging, saving, devices) stays in
TrainingArguments, where transformers users expect it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

__all__ = ["PaKDTrainingArguments"]


@dataclass
class PaKDTrainingArguments(TrainingArguments):
    """[`~transformers.TrainingArguments`] with one more field, `recipe`.

    Works with `HfArgumentParser` like any TrainingArguments subclass (`--recipe path.yaml`).
    """

    recipe: str | None = field(
        default=None,
        metadata={
            "help": "Path to a PaKD recipe YAML (stages, distillation, pruning). A `recipe` passed to "
            "PaKDTrainer overrides it."
        },
    )
