"""Compilers: the recipe model, source fetchers and one recipe file per compiler.

Recipes ship in ``selfhost/compilers/recipes/NAME.toml``. Users add their own with
the ``selfhost.recipe_dirs`` setting, or pass a file path where a compiler name is
expected; a recipe found there wins over a shipped one of the same name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from selfhost.compilers.recipe import Recipe, load_recipe
from selfhost.errors import UsageError

BUILTIN_DIR = Path(__file__).parent / "recipes"


def recipe_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    """The directories searched for recipes, user ones first."""
    return [*extra, BUILTIN_DIR]


def available(extra: Iterable[Path] = ()) -> dict[str, Path]:
    """Map every known compiler name to its recipe file."""
    found: dict[str, Path] = {}
    for directory in recipe_dirs(extra):
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def find_recipe(name_or_path: str, extra: Iterable[Path] = ()) -> Recipe:
    """Load a recipe by compiler name, or from a ``.toml`` path."""
    candidate = Path(name_or_path)
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        if not candidate.is_file():
            raise UsageError(f"recipe file {name_or_path} does not exist")
        return load_recipe(candidate)
    known = available(extra)
    if name_or_path not in known:
        raise UsageError(
            f"no recipe for compiler {name_or_path!r}",
            hint=f"known compilers: {', '.join(sorted(known)) or 'none'}; or pass a recipe "
            "file path, or add a directory to selfhost.recipe_dirs",
        )
    return load_recipe(known[name_or_path])


__all__ = ["Recipe", "available", "find_recipe", "load_recipe", "recipe_dirs"]
