"""pakd-hf: multi-stage pruning and knowledge distillation for Hugging Face transformers.

Public API: :class:`PaKDTrainer`, :class:`PaKDTrainingArguments`, :func:`load_recipe` (and
the :class:`Recipe` it returns, with :class:`RecipeError` for invalid recipes).

The trainer and the arguments import transformers, which is slow to import; they are loaded
on first use so that `pakd validate` and recipe handling stay quick.
"""

from . import export as _export  # noqa: F401  stdlib only: registers PaKD model classes with transformers' Auto classes when those load
from .recipe import Recipe, RecipeError, load_recipe

__version__ = "0.1.0"

__all__ = ["PaKDTrainer", "PaKDTrainingArguments", "Recipe", "RecipeError", "load_recipe", "__version__"]


def __getattr__(name: str):
    if name == "PaKDTrainer":
        from .trainer import PaKDTrainer

        return PaKDTrainer
    if name == "PaKDTrainingArguments":
        from .arguments import PaKDTrainingArguments

        return PaKDTrainingArguments
    raise AttributeError(f"module 'pakd_hf' has no attribute {name!r}")
