"""Tasks of the platform domain: slugs, releases, apps, config and the platform daemon."""

from __future__ import annotations

from pathlib import Path

from invoke import Context

from selfhost.cli.base import make_ui, settings, task
from selfhost.compilers import find_recipe
from selfhost.config import SUITES
from selfhost.errors import UsageError


@task(help={
    "compiler": "the recipe to package (default: selfhost.default_compiler)",
    "out": "where to write the slug (default: <workspace>/slugs/NAME-VERSION.tgz)",
    "strict": "make every lint an error (no slug is written if one fires)",
    "stack": "lint against this suite's stack instead of the one it was built on",
    "engine": "sandbox engine for the bootstrap: bwrap (default) or docker",
    "json": "print {path, checksum, size, process_types, warnings} as JSON",
})
def slug(c: Context, compiler: str | None = None, out: str | None = None, strict: bool = False,
         stack: str | None = None, engine: str | None = None, json: bool = False) -> None:
    """Package the final stage and the platform app into a reproducible slug."""
    from selfhost.platform.packaging import build_compiler_slug
    from selfhost.stages.engine import make_engine

    s = settings(c, engine=engine)
    ui = make_ui(s, json=json)
    if stack and stack not in SUITES:
        raise UsageError(f"--stack is {stack!r}; expected one of {', '.join(SUITES)}")
    recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
    eng = make_engine(s.engine, docker_url=s.docker_url, echo=ui.echo)
    with ui.live():
        result = build_compiler_slug(s, recipe, eng, ui, out=Path(out) if out else None,
                                     strict=strict, target_suite=stack)
    if json:
        ui.emit_json(result.to_json())
        return
    info = result.info
    ui.info(f"slug {info.path}\n  checksum: {info.checksum}\n  size: {info.size} bytes\n"
            f"  process types: {', '.join(f'{k}: {v}' for k, v in info.process_types.items())}"
            f"\n  stack: {result.target_stack.spec.name}\n  lints: {len(result.lints)}")
