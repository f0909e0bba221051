"""The environment of a stage's steps: shared by the pipeline and the compile workers.

Kept free of heavy imports: worker dynos import it on the stack's own Python.
"""

from __future__ import annotations

from selfhost.compilers.recipe import Recipe

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_DIR = "/build"
SRC_DIR = "/build/src"
HOME_DIR = "/build/home"
DESTDIR = "/out"


def stage_environment(
    recipe: Recipe, builder: str, jobs: str, destdir: str = DESTDIR
) -> dict[str, str]:
    """Every variable a stage's steps see, and nothing else (see docs/recipes.md)."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": HOME_DIR,
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch),
        "PREFIX": recipe.prefix,
        "DESTDIR": destdir,
        "SRC": SRC_DIR,
    }
    env["BUILDER"] = recipe.expand(builder, env)
    for key, value in recipe.env:
        env[key] = recipe.expand(value, env)
    env["JOBS"] = jobs
    return env
