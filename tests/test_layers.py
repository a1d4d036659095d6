"""Layers point down: checked on the source, so a new import that points up fails here.

- the engine (``prune/``, ``arch/``, ``distill``) never imports the trainer, the recipe front
  end, export, the hub, the pipeline or the CLI;
- the library (everything outside ``pipeline/`` and the CLI) never imports the pipeline or the CLI;
- nothing imports the CLI.
Function-level imports count: they are still imports.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pakd_hf"
ENGINE = ("prune", "arch", "distill")
ABOVE_ENGINE = ("trainer", "recipe", "arguments", "export", "export_files", "hub", "checkpoints", "pipeline", "cli")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, parts


def _imports(path: Path, parts: list[str]) -> set[str]:
    """The pakd_hf modules ``path`` imports anywhere in it, as dotted names under pakd_hf."""
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "pakd_hf":
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module is None:  # from . import x: x may be a module
                found.update(".".join(target + [a.name]) for a in node.names)
            found.add(".".join(target))
        elif isinstance(node, ast.Import):
            found.update(".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "pakd_hf")
    return {f for f in found if f}


def _top(name: str) -> str:
    return name.split(".")[0]


MODULES = list(_modules())


def test_the_scan_sees_the_package():
    names = {".".join(parts) for _, parts in MODULES}
    assert {"trainer", "prune.session", "pipeline.compress", "pipeline.data", "cli"} <= names
    imports = _imports(PACKAGE / "pipeline" / "compress.py", ["pipeline", "compress"])
    assert "trainer" in imports and "pipeline.tasks" in imports  # relative imports are resolved


@pytest.mark.parametrize("path,parts", [m for m in MODULES if m[1] and m[1][0] in ENGINE],
                         ids=lambda v: ".".join(v) if isinstance(v, list) else "")
def test_engine_points_down(path, parts):
    up = sorted(i for i in _imports(path, parts) if _top(i) in ABOVE_ENGINE)
    assert not up, f"{'.'.join(parts)} imports {up}"


@pytest.mark.parametrize("path,parts", [m for m in MODULES if not m[1] or m[1][0] not in ("pipeline", "cli", "__main__")],
                         ids=lambda v: ".".join(v) or "pakd_hf" if isinstance(v, list) else "")
def test_library_never_imports_the_pipeline(path, parts):
    up = sorted(i for i in _imports(path, parts) if _top(i) in ("pipeline", "cli"))
    assert not up, f"{'.'.join(parts) or 'pakd_hf'} imports {up}"


def test_nothing_imports_the_cli():
    users = sorted(".".join(parts) for path, parts in MODULES
                   if parts != ["__main__"] and any(_top(i) == "cli" for i in _imports(path, parts)))
    assert not users


@pytest.mark.parametrize("path,parts", [m for m in MODULES if m[1] and m[1][0] == "arch"],
                         ids=lambda v: ".".join(v) if isinstance(v, list) else "")
def test_arch_is_below_prune(path, parts):
    """The adapters and the Structure record sit under the pruning engine, never on it."""
    up = sorted(i for i in _imports(path, parts) if _top(i) == "prune")
    assert not up, f"{'.'.join(parts)} imports {up}"
