"""Architecture adapters: one small file per model family, found by :func:`get_adapter`.

Adding a family is ONE new file in this folder: subclass :class:`ArchAdapter` and decorate it
with :func:`register`. Every module of this package is imported on first lookup, so nothing else
needs editing.

>>> adapter = get_adapter(model)          # raises UnsupportedArchitectureError (a ValueError)
>>> adapter.update_config(model.config, structure)
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    ArchAdapter,
    AttentionParts,
    Cut,
    HeadDimError,
    LayerParts,
    NonUniformStructureError,
    UnsupportedArchitectureError,
)

__all__ = [
    "ArchAdapter",
    "AttentionParts",
    "Cut",
    "HeadDimError",
    "LayerParts",
    "NonUniformStructureError",
    "UnsupportedArchitectureError",
    "adapter_class_for_model_type",
    "get_adapter",
    "register",
    "registered_adapters",
]

_REGISTRY: list[type[ArchAdapter]] = []
_discovered = False


def register(cls: type[ArchAdapter]) -> type[ArchAdapter]:
    """Class decorator: make an adapter visible to :func:`get_adapter`."""
    if cls not in _REGISTRY:
        _REGISTRY.append(cls)
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "structure") and not info.name.startswith("_"):  # the adapters
            importlib.import_module(f"{__name__}.{info.name}")


def registered_adapters() -> list[type[ArchAdapter]]:
    _discover()
    return list(_REGISTRY)


def _supported() -> str:
    return "; ".join(a.description for a in registered_adapters())


def get_adapter(model) -> ArchAdapter:
    """The adapter for ``model`` (unwrap DDP / accelerate wrappers first).

    Raises :class:`UnsupportedArchitectureError` naming the model class and the supported
    families when no adapter matches.
    """
    model = getattr(model, "module", model) if not hasattr(model, "config") else model
    for cls in registered_adapters():
        if cls.matches(model):
            return cls(model)
    raise UnsupportedArchitectureError(
        f"pruning does not support {type(model).__name__}; supported families: {_supported()}"
    )


def adapter_class_for_model_type(model_type: str) -> type[ArchAdapter]:
    """The adapter class for a ``config.model_type`` (used to verify saved folders without a model)."""
    for cls in registered_adapters():
        if model_type in cls.model_types:
            return cls
    raise UnsupportedArchitectureError(
        f"pruning does not support model_type {model_type!r}; supported families: {_supported()}"
    )
