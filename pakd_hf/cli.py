"""The `pakd` command line. A thin layer over the library: parse, call, print."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .recipe import RecipeError, load_recipe


def _cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path)
        except RecipeError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 2
            continue
        stages = ", ".join(
            f"{s.name} ({f'{s.steps} steps' if s.steps is not None else f'{s.epochs:g} epochs'}"
            f"{', distil' if s.distillation is not None else ''})"
            for s in recipe.stages
        )
        print(f"{path}: ok: '{recipe.name}' ({recipe.task}), {len(recipe.stages)} stage(s): {stages}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pakd",
        description="Compress Hugging Face models by multi-stage pruning and knowledge distillation.",
    )
    parser.add_argument("--version", action="version", version=f"pakd-hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    validate = sub.add_parser("validate", help="check recipe files and print a summary of each")
    validate.add_argument("recipes", nargs="+", metavar="RECIPE.yaml")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
