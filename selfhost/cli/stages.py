"""Tasks of the stages domain: ``bootstrap`` and ``stack``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from invoke import Context, Exit

from selfhost.cli.base import make_engine, make_ui, settings, task
from selfhost.compilers import find_recipe
from selfhost.errors import SelfhostError, UsageError

if TYPE_CHECKING:
    from selfhost.stages.diff import DiffReport
    from selfhost.stages.pipeline import BootstrapResult
    from selfhost.ui import UI

COMPILER_HELP = "recipe name (tcc) or a recipe .toml path; default selfhost.default_compiler"
JSON_HELP = "print the result as JSON on stdout (progress goes to stderr)"

# The library modules are imported inside the tasks: `invoke --list`, `--help` and the
# quick tasks (a cached bootstrap, a diff verdict) start faster without them.


@task(
    help={
        "compiler": "recipe name (tcc, go) or a recipe .toml path; "
        "default selfhost.default_compiler",
        "stages": "number of stages to build (default: the recipe's)",
        "engine": "sandbox engine: bwrap (default) or docker",
        "force": "rebuild every stage even if it is cached",
        "json": JSON_HELP,
        "verbose": "echo every sandbox command before it runs",
        "from_platform": "take stages the platform's compile workers built (same input "
        "hash) from its stage store instead of building them",
        "api": "with --from-platform: a platform API URL instead of the local platform",
    }
)
def bootstrap(
    c: Context,
    compiler: str | None = None,
    stages: str | None = None,
    engine: str | None = None,
    force: bool = False,
    json: bool = False,
    verbose: bool = False,
    from_platform: bool = False,
    api: str | None = None,
) -> None:
    """Build a compiler in stages on its stack and check the fixpoint."""
    from selfhost.stages.pipeline import Bootstrap, require_fixpoint

    s = settings(c, engine=engine, verbose=verbose or None)
    ui = make_ui(s, json=json)
    recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
    count = parse_stages(stages)
    eng = make_engine(s, ui)
    remote = None
    if from_platform:
        from selfhost.cli.platform import client_for

        remote = client_for(s, ui, api)[0].fetch_stage
    elif api:
        raise UsageError("--api is for --from-platform", hint="add --from-platform")
    outcome = Bootstrap(s, eng, ui, remote=remote).run(recipe, stages=count, force=force)
    if json:
        ui.emit_json(outcome.to_json())
    else:
        report(ui, outcome)
    require_fixpoint(outcome)


@task(
    iterable=["stage0"],
    help={
        "compiler": COMPILER_HELP,
        "stage0": "a stage0 the recipe declares (default, or [stage0.alternatives.NAME]); "
        "repeat it; default: every one it declares",
        "engine": "sandbox engine: bwrap (default) or docker",
        "json": JSON_HELP,
    },
)
def ddc(
    c: Context,
    compiler: str | None = None,
    stage0: list[str] | None = None,
    engine: str | None = None,
    json: bool = False,
) -> None:
    """Diverse double-compiling: stage2 from several unrelated stage0s, byte-identical?"""
    from selfhost.stages.ddc import choose_stage0s, run_ddc
    from selfhost.stages.pipeline import Bootstrap

    s = settings(c, engine=engine)
    ui = make_ui(s, json=json)
    recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
    chosen = choose_stage0s(recipe, list(stage0 or []))
    result = run_ddc(Bootstrap(s, make_engine(s, ui), ui), recipe, chosen)
    if json:
        ui.emit_json(result.to_json())
    else:
        ui.table(
            f"diverse double-compiling of {recipe.name}",
            ["stage0", "builder", "stage1 tree", "stage2 tree", "compiler sha256"],
            [
                (
                    r.stage0.name,
                    r.stage0.builder,
                    r.stage1.manifest.tree_digest[:16],
                    r.stage2.manifest.tree_digest[:16],
                    ((r.tools.get("compiler") or {}).get("sha256") or "?")[:16],
                )
                for r in result.runs
            ],
        )
        verdict = "identical" if result.identical else "DIFFERENT"
        ui.info(
            f"stage2 from {len(result.runs)} stage0s: {verdict} "
            f"(ddc.json in {s.workspace / 'stages' / recipe.name})"
        )
    if not result.identical:
        first, *others = result.runs
        odd = next(
            r for r in others if r.stage2.manifest.tree_digest != first.stage2.manifest.tree_digest
        )
        raise SelfhostError(
            f"diverse double-compiling failed: the stage2 from {first.stage0.name} and "
            f"the one from {odd.stage0.name} differ",
            hint=f"see why: invoke diff-stages --left {first.stage2.entry} "
            f"--right {odd.stage2.entry}",
        )


@task(
    iterable=["vary"],
    help={
        "compiler": COMPILER_HELP,
        "vary": "variations, comma-separated or repeated (default all): build-path, time, "
        "locale, timezone, umask, jobs, user, hostname, file-ordering, engine",
        "engine": "the reference's sandbox engine: bwrap (default) or docker",
        "json": JSON_HELP,
    },
)
def verify(
    c: Context,
    compiler: str | None = None,
    vary: list[str] | None = None,
    engine: str | None = None,
    json: bool = False,
) -> None:
    """Rebuild the final stage under variations of the environment: what changes what?"""
    from selfhost.stages.pipeline import Bootstrap
    from selfhost.stages.verify import choose, run_verify

    s = settings(c, engine=engine)
    ui = make_ui(s, json=json)
    recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
    names = choose(list(vary or []))
    result = run_verify(
        Bootstrap(s, make_engine(s, ui), ui), recipe, names, lambda n: make_engine(s, ui, n)
    )
    where = s.workspace / "stages" / recipe.name
    if json:
        ui.emit_json(result.to_json())
    else:
        ui.table(
            f"{recipe.name} stage{result.stage} ({result.tree_digest[:16]}) rebuilt under "
            "variations",
            ["variation", "what changed", "result", "seconds", "artifacts that differ"],
            [
                (
                    row.name,
                    row.what,
                    row.status,
                    f"{row.seconds:.1f}",
                    row.message
                    or ", ".join(f"{p} ({result.cell(row, p)})" for p in list(row.files)[:4])
                    + (f", +{len(row.files) - 4}" if len(row.files) > 4 else ""),
                )
                for row in [result.control, *result.rows]
            ],
        )
        ui.info(
            f"{result.reproducible_percent:.1f}% of {len(result.artifacts)} artifacts "
            f"reproducible under every variation ({where / 'verify.html'}, verify.json)"
        )
    bad = result.undeclared
    if bad:
        first = next((r for r in bad if r.kept), None)
        raise SelfhostError(
            f"{recipe.name} is not reproducible under: {', '.join(r.name for r in bad)}",
            hint=(
                f"see why: invoke diff-stages --left {first.kept} --right "
                f"{where / f'stage{result.stage}'}; "
                if first
                else ""
            )
            + "or declare the difference in the recipe ([[verify.allow]] with vary, path "
            "and reason)",
        )


@task(
    help={
        "left": "a selfhost workspace (its stage cache)",
        "right": "another workspace (another machine's, a CI runner's), or a Platform API "
        "URL: an app's stage store (with --app)",
        "app": "with a URL: the app whose stage store is challenged",
        "json": "print the result as JSON on stdout",
    },
)
def challenge(
    c: Context, left: str, right: str, app: str | None = None, json: bool = False
) -> None:
    """Did two builders get the same stages from the same input hashes? Explain any
    difference."""
    from selfhost.stages.challenge import challenge as run_challenge
    from selfhost.stages.challenge import challenge_platform, is_url

    s = settings(c)
    ui = make_ui(s, json=json)
    if is_url(left):
        raise UsageError(
            "--left must be a workspace (the API lists no stages: it is asked for the "
            "left side's input hashes)",
            hint=f"invoke challenge --left WORKSPACE --right {left} --app APP",
        )
    if is_url(right):
        if not app:
            raise UsageError(
                "a platform side needs the app whose stage store to challenge",
                hint=f"add --app APP (the stages of `invoke release --app APP`, or of its "
                f"compile workers) to: invoke challenge --left {left} --right {right}",
            )
        from selfhost.cli.platform import client_for

        client = client_for(s, ui, right)[0]
        result = challenge_platform(Path(left).expanduser().absolute(), client, app)
    else:
        if app:
            raise UsageError("--app is for a platform URL on --right", hint="drop --app")
        result = run_challenge(
            Path(left).expanduser().absolute(), Path(right).expanduser().absolute()
        )
    if json:
        ui.emit_json(result.to_json())
    else:
        ui.table(
            f"stages built from the same inputs in {left} and {right}",
            ["input hash", "stage", "verdict", "left tree", "right tree", "why"],
            [
                (
                    item.input_hash[:16],
                    f"{item.compiler} stage{item.stage}",
                    "identical" if item.identical else "DIFFERENT",
                    item.left_digest[:12],
                    item.right_digest[:12],
                    ""
                    if item.report is None
                    else ", ".join(
                        f"{f.path}: {f.analysis.cause.value if f.analysis else f.status}"
                        for f in item.report.differing[:3]
                    ),
                )
                for item in result.common
            ],
        )
        ui.info(
            f"{len(result.common)} stages in common: {len(result.different)} differ; "
            f"{result.only_left} only in {left}, {result.only_right} only in {right}"
        )
    if not result.common:
        raise UsageError(
            "the two sides hold no stage built from the same inputs",
            hint="bootstrap the same recipe on the same stack in both (invoke bootstrap)",
        )
    if result.different:
        raise SelfhostError(
            f"{len(result.different)} stage(s) differ between builders from the same inputs",
            hint="the table (or --json) says which files and why; "
            "invoke diff-stages --left ENTRY --right ENTRY shows one in full",
        )


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
        rows.append(
            (
                f"stage{st.stage}",
                st.input_hash[:16],
                "yes" if st.cached else "no",
                "-" if tests is None else ("passed" if tests.passed else "FAILED"),
                len(st.manifest.artifacts),
                st.manifest.tree_digest[:16],
            )
        )
    ui.table(
        f"{outcome.recipe.name} {outcome.recipe.version} on {outcome.stack.spec.name} "
        f"({outcome.engine})",
        ["stage", "input hash", "cached", "tests", "artifacts", "tree digest"],
        rows,
    )
    cmp = outcome.comparison
    if cmp is None:
        ui.info("fixpoint not checked: fewer than two stages")
        return
    a, b = outcome.stages[-2].stage, outcome.stages[-1].stage
    for path, reason in cmp.excluded:
        ui.warn(f"excluded from the comparison, and different: {path} ({reason})")
    if cmp.same:
        ui.info(
            f"fixpoint reached: stage{a} and stage{b} are byte-identical "
            f"({len(cmp.identical)} artifacts)"
        )
    else:
        n = len(cmp.different) + len(cmp.only_left) + len(cmp.only_right)
        message = f"fixpoint not reached: stage{a} and stage{b} differ in {n} artifact(s)"
        if outcome.recipe.fixpoint.value == "warn":
            ui.warn(message + " (the recipe's policy is 'warn')")
        else:
            ui.error(message)


@task(
    help={
        "compiler": "the recipe whose packages the stack includes "
        "(default: selfhost.default_compiler)",
        "all": "list every installed package, not only the requested ones",
        "json": "print the stack as JSON",
    }
)
def stack(c: Context, compiler: str | None = None, all: bool = False, json: bool = False) -> None:
    """Build the stack (a pinned Debian rootfs) if needed, and show it."""
    from selfhost.stages.pipeline import ensure_stack

    s = settings(c)
    ui = make_ui(s, json=json)
    recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
    with ui.step("stack") as step:
        built = ensure_stack(s, recipe, ui.info)
        step.note = built.spec.name
    requested = built.spec.packages
    if json:
        ui.emit_json(
            {
                **built.identity,
                "path": str(built.rootfs),
                "packages": built.versions(requested),
                "installed": built.installed if all else len(built.installed),
            }
        )
        return
    ui.info(
        f"stack {built.spec.name}\n  suite: {built.spec.suite} ({built.spec.variant}, "
        f"{built.spec.arch})\n  digest: {built.spec.digest}\n  packages digest: "
        f"{built.packages_digest}\n  rootfs: {built.rootfs}\n  installed: "
        f"{len(built.installed)} packages"
    )
    shown = built.installed if all else built.versions(requested)
    ui.table(
        "packages" if all else "requested packages",
        ["package", "version"],
        sorted((p, v or "MISSING") for p, v in shown.items()),
    )


@task(
    auto_shortflags=False,
    help={
        "compiler": "the recipe whose last bootstrap is compared "
        "(default: selfhost.default_compiler)",
        "from": "the left stage number (default: the second to last stage)",
        "to": "the right stage number (default: the last stage)",
        "left": "compare any two trees instead: the left directory (a stage entry or any tree)",
        "right": "the right directory, with --left",
        "json": "print the full structured result as JSON on stdout",
        "html": "also write a self-contained HTML report to this file",
        "diffoscope": "also hand each differing pair to diffoscope, if it is installed",
    },
)
def diff_stages(
    c: Context,
    compiler: str | None = None,
    from_: str | None = None,
    to: str | None = None,
    left: str | None = None,
    right: str | None = None,
    json: bool = False,
    html: str | None = None,
    diffoscope: bool = False,
) -> None:
    """Prove the fixpoint (exit 0), or explain every difference (exit 1)."""
    from selfhost.stages import diff_html
    from selfhost.stages.diff import directory_job, run_diffoscope, stage_job
    from selfhost.workspace import Workspace

    s = settings(c)
    ui = make_ui(s, json=json)
    if left or right:
        if not (left and right):
            raise UsageError("--left and --right go together", hint="give both directories")
        if from_ or to:
            raise UsageError(
                "--from/--to compare stages; --left/--right compare directories",
                hint="use one pair or the other",
            )
        exclusions = find_recipe(compiler, s.recipe_dirs).exclude if compiler else ()
        job = directory_job(Path(left), Path(right), exclusions)
    else:
        recipe = find_recipe(compiler or s.default_compiler, s.recipe_dirs)
        job = stage_job(
            Workspace(s.workspace), recipe, parse_stage(from_, "--from"), parse_stage(to, "--to")
        )
    report = job.run()
    if json:
        ui.emit_json(report.to_json())
    else:
        show_diff(ui, report, job.fixpoint)
    if html:
        Path(html).write_text(diff_html.render(report, job.title))
        ui.info(f"HTML report: {html}")
    if diffoscope:
        for line in run_diffoscope(report, Workspace(s.workspace).root / "reports"):
            ui.info(line)
    if not report.identical:
        raise Exit(code=1)


def parse_stage(value: str | None, flag: str) -> int | None:
    """Validate a stage number given on the command line."""
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{flag} is {value!r}; expected a stage number (1, 2, ...)")
    return int(value)


def show_diff(ui: UI, report: DiffReport, fixpoint: bool) -> None:
    """The human form of a diff report: verdict first, then each difference."""
    line = report.verdict_line(fixpoint)
    (ui.info if report.identical else ui.error)(line)
    rows = []
    for f in report.differing:
        a = f.analysis
        sections = ", ".join(f"{s.name} {s.differing_bytes}" for s in (a.sections if a else [])[:3])
        rows.append(
            (
                f.path,
                f.status,
                a.cause.value if a else "-",
                "" if not a or a.strings_diff_lines is None else a.strings_diff_lines,
                sections,
                (a.evidence[0] if a and a.evidence else "")[:80],
            )
        )
    if rows:
        ui.table(
            "differences",
            ["file", "status", "cause", "strings diff", "sections (bytes)", "evidence"],
            rows,
        )
    for f in report.excluded:
        ui.warn(f"excluded, and different: {f.path} ({f.reason})")
