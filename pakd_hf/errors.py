"""The one error a user's input raises: :class:`RecipeError`, a ``ValueError`` whose message is
one line naming the recipe field and the fix. A leaf module (it imports nothing of the
package), so the engine (``prune/``, ``arch/``) can raise it without importing the recipe front
end."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["RecipeError", "DeployError", "LaunchError", "MAX_MESSAGE", "one_line", "describe"]

MAX_MESSAGE = 400

_REPR = reprlib.Repr()  # Python 3.11's takes no keyword arguments
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 3, 3, 40, 40, 40


def describe(value: Any) -> str:
    """A short repr of a user's value, built in bounded time whatever its size (reprlib)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length():,} bits"  # repr() of a huge int is slow or refused
    text = _REPR.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def one_line(text: Any, limit: int) -> str:
    """``text`` as one printable line of at most ``limit`` characters (no control characters:
    a message must not become two lines or a terminal escape)."""
    text = text if isinstance(text, str) else describe(text)
    text = "".join(c if c.isprintable() else " " for c in text[: limit * 4])
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RecipeError(ValueError):
    """A recipe is invalid. The message is one line naming the field and the fix."""

    def __init__(self, path: str, problem: str):
        self.field = one_line(path, 120)
        self.problem = one_line(problem, MAX_MESSAGE)
        where = f"recipe field '{self.field}'" if self.field else "recipe"
        super().__init__(f"{where}: {self.problem}")


class LaunchError(ValueError):
    """A launch that cannot work on this machine (more processes than GPUs): one line, before any
    work; the CLI prints it once a machine and exits 2."""


class DeployError(ValueError):
    """A one-line reason why a model cannot be exported or run (the CLI prints it and exits 1).
    Here, not in :mod:`pakd_hf.pipeline.deploy` (which imports torch), so that the CLI can catch
    it without importing PyTorch before a bad recipe is refused."""
