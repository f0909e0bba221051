"""Tasks of the stages domain: ``bootstrap`` and ``stack``."""

from __future__ import annotations

from invoke import Context

from selfhost.cli.base import make_ui, settings, task
from selfhost.compilers import find_recipe
from selfhost.errors import UsageError
from selfhost.stages.engine import make_engine
from selfhost.stages.pipeline import Bootstrap, BootstrapResult, require_fixpoint
from selfhost.ui import UI


@task(help={
    "compiler": "recipe name (tcc, go) or a recipe .toml path; default selfhost.default_compiler",
    "stages": "number of stages to build (default: the recipe's)",
    "engine": "sandbox engine: bwrap (default) or docker",
    "force": "rebuild every stage even if it is cached",
    "json": "print the result as JSON on stdout (progress goes to stderr)",
    "verbose": "echo every sandbox command before it runs",
})
def bootstrap(c: Context, compiler: str | None = None, stages: str | None = None,
              engine: str | None = None, force: bool = False, json: bool = False,
              verbose: bool = False) -> None:
    """Build a compiler in stages on its stack and check the fixpoint."""
    s = settings(c, engine=engine, verbose=verbose or None)
    ui = make_ui(s, json=json)
    recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
    count = parse_stages(stages)
    eng = make_engine(s.engine, docker_url=s.docker_url, echo=ui.echo)
    outcome = Bootstrap(s, eng, ui).run(recipe, stages=count, force=force)
    if json:
        ui.emit_json(outcome.to_json())
    else:
        report(ui, outcome)
    require_fixpoint(outcome)


def parse_stages(value: str | None) -> int | None:
    """Validate --stages: a whole number from 1 to 10."""
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 10:
        raise UsageError(f"--stages is {value!r}; expected a whole number from 1 to 10")
    return int(value)


def report(ui: UI, outcome: BootstrapResult) -> None:
    """The human summary of a bootstrap: one row per stage, then the verdict."""
    rows = []
    for st in outcome.stages:
        tests = st.manifest.tests
        rows.append((f"stage{st.stage}", st.input_hash[:16], "yes" if st.cached else "no",
                     "-" if tests is None else ("passed" if tests.passed else "FAILED"),
                     len(st.manifest.artifacts), st.manifest.tree_digest[:16]))
    ui.table(f"{outcome.recipe.name} {outcome.recipe.version} on {outcome.stack.spec.name} "
             f"({outcome.engine})",
             ["stage", "input hash", "cached", "tests", "artifacts", "tree digest"], rows)
    cmp = outcome.comparison
    if cmp is None:
        ui.info("fixpoint not checked: fewer than two stages")
        return
    a, b = outcome.stages[-2].stage, outcome.stages[-1].stage
    for path, reason in cmp.excluded:
        ui.warn(f"excluded from the comparison, and different: {path} ({reason})")
    if cmp.same:
        ui.info(f"fixpoint reached: stage{a} and stage{b} are byte-identical "
                f"({len(cmp.identical)} artifacts)")
    else:
        n = len(cmp.different) + len(cmp.only_left) + len(cmp.only_right)
        message = f"fixpoint not reached: stage{a} and stage{b} differ in {n} artifact(s)"
        if outcome.recipe.fixpoint.value == "warn":
            ui.warn(message + " (the recipe's policy is 'warn')")
        else:
            ui.error(message)


@task(help={
    "compiler": "the recipe whose packages the stack includes (default: selfhost.default_compiler)",
    "all": "list every installed package, not only the requested ones",
    "json": "print the stack as JSON",
})
def stack(c: Context, compiler: str | None = None, all: bool = False, json: bool = False
          ) -> None:
    """Build the stack (a pinned Debian rootfs) if needed, and show it."""
    s = settings(c)
    ui = make_ui(s, json=json)
    recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
    boot = Bootstrap(s, make_engine("bwrap"), ui)
    with ui.step("stack") as step:
        built = boot.ensure_stack(recipe)
        step.note = built.spec.name
    requested = built.spec.packages
    if json:
        ui.emit_json({**built.identity, "path": str(built.rootfs),
                      "packages": built.versions(requested),
                      "installed": built.installed if all else len(built.installed)})
        return
    ui.info(f"stack {built.spec.name}\n  suite: {built.spec.suite} ({built.spec.variant}, "
            f"{built.spec.arch})\n  digest: {built.spec.digest}\n  packages digest: "
            f"{built.packages_digest}\n  rootfs: {built.rootfs}\n  installed: "
            f"{len(built.installed)} packages")
    shown = built.installed if all else built.versions(requested)
    ui.table("packages" if all else "requested packages", ["package", "version"],
             sorted((p, v or "MISSING") for p, v in shown.items()))
