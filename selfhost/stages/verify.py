"""``invoke verify``: is the final stage reproducible, and what does it depend on?

The final stage of the bootstrap (built, or taken from the cache) is the reference. It
is built again with the one stage builder, from the same inputs (the same previous
stage, sources, stack and recipe), first as it was built (the **control**: a plain
rebuild must give the same tree, or nothing below means much), then once per
variation of the build environment, each alone:

============== ==============================================================
build-path     the work directory at another path (``/build`` elsewhere)
time           a clock 398 days ahead (libfaketime, ``LD_PRELOAD``)
locale         ``et_EE.UTF-8`` (its collation sorts ``z`` after ``s``), compiled
               on the host and given with ``LOCPATH``
timezone       ``TZ=GMT-14`` (UTC+14, no tzdata needed)
umask          ``0002`` instead of ``022``
jobs           another ``$JOBS`` (1, or 4 when the bootstrap uses 1)
user           user and group ids 1234 inside the sandbox instead of 0 (bwrap)
hostname       another host name
file-ordering  the work directory seen through Debian's ``disorderfs``, which
               shuffles the order of directory entries
engine         the other engine (Docker for bwrap, bwrap for Docker)
============== ==============================================================

Each rebuild is compared with the reference artifact by artifact (the recipe's
``[compare] artifacts``, file modes included), and each differing artifact is
explained by the same analysis as ``invoke diff-stages``. A difference the recipe
declares (``[[verify.allow]]``: ``vary``, ``path``, ``reason``) is reported with its
reason and does not fail; any other makes the command exit non-zero.

Nothing a variation builds enters the stage cache: the rebuilds run in the cache's
``tmp/``, and the tree of a rebuild that differs is kept, for ``invoke diff-stages``,
under ``stages/<compiler>/verify/<variation>/``. The result is ``verify.json`` and a
self-contained ``verify.html`` in ``stages/<compiler>/`` (see docs/diff.md).
"""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfhost.compilers.recipe import VARIATION_NAMES, Recipe
from selfhost.errors import SelfhostError, UsageError
from selfhost.stages.builder import BUILD, StageSpec
from selfhost.stages.diff import Side, compare_sides
from selfhost.stages.engine import HOSTNAME, Engine, Mount
from selfhost.stages.manifest import glob_match, write_json_atomic
from selfhost.stages.pipeline import Bootstrap, BootstrapResult, StageResult
from selfhost.stages.runners import SandboxRunner

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime")
FAKETIME_AT = "/usr/lib/selfhost-verify/faketime"
LOCALE = "et_EE.UTF-8"
LOCALE_AT = "/usr/lib/selfhost-verify/locale"
OTHER_ROOT = "/var/tmp/selfhost-verify/build-path"
OTHER_HOSTNAME = "verify-other-host"
OTHER_UID = 1234


class Skipped(Exception):
    """A variation this machine cannot apply, and why (it is reported, not failed)."""


@dataclass
class Context:
    """What a variation needs to set up one rebuild."""

    bootstrap: Bootstrap
    outcome: BootstrapResult
    jobs: str
    scratch: Path  # for what a variation prepares (a compiled locale)
    other_engine: Callable[[], Engine]


@dataclass
class Setup:
    """How one rebuild differs from the reference build."""

    what: str  # what changed, for the report
    env: dict[str, str] = field(default_factory=dict)  # set (or replaced)
    root: str = BUILD
    mounts: tuple[Mount, ...] = ()
    uid: int = 0
    hostname: str = HOSTNAME
    umask: str = "022"
    engine: Engine | None = None
    disorder: bool = False
    mount_points: tuple[str, ...] = ()  # to create in the stack (bwrap's read-only root)


def _build_path(ctx: Context) -> Setup:
    return Setup(f"the work directory at {OTHER_ROOT} instead of {BUILD}", root=OTHER_ROOT)


def _time(ctx: Context) -> Setup:
    if not (FAKETIME_LIB / "libfaketime.so.1").is_file():
        raise Skipped(f"libfaketime is not installed ({FAKETIME_LIB}): apt-get install faketime")
    return Setup(
        "the clock 398 days ahead (libfaketime)",
        env={
            "LD_PRELOAD": f"{FAKETIME_AT}/libfaketime.so.1",
            "FAKETIME": "+398d",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        },
        mounts=(Mount(FAKETIME_LIB, FAKETIME_AT),),
        mount_points=(FAKETIME_AT,),
    )


def _locale(ctx: Context) -> Setup:
    compiled = ctx.scratch / "locale"
    if not (compiled / LOCALE).is_dir():
        if not shutil.which("localedef") or not Path("/usr/share/i18n/locales/et_EE").is_file():
            raise Skipped("no locale sources to compile et_EE from: apt-get install locales")
        compiled.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(
            ["localedef", "-i", "et_EE", "-f", "UTF-8", str(compiled / LOCALE)],
            capture_output=True,
            text=True,
        )
        if run.returncode not in (0, 1) or not (compiled / LOCALE).is_dir():  # 1: warnings
            raise Skipped(f"localedef failed: {run.stderr.strip()[-200:]}")
    return Setup(
        f"LC_ALL={LOCALE} (compiled on the host, LOCPATH), LANGUAGE=et:fr",
        env={"LC_ALL": LOCALE, "LANG": LOCALE, "LANGUAGE": "et:fr", "LOCPATH": LOCALE_AT},
        mounts=(Mount(compiled, LOCALE_AT),),
        mount_points=(LOCALE_AT,),
    )


def _timezone(ctx: Context) -> Setup:
    return Setup("TZ=GMT-14 (UTC+14) instead of UTC", env={"TZ": "GMT-14"})


def _umask(ctx: Context) -> Setup:
    return Setup("umask 0002 instead of 022", umask="0002")


def _jobs(ctx: Context) -> Setup:
    other = "4" if ctx.jobs == "1" else "1"
    return Setup(f"JOBS={other} instead of {ctx.jobs}", env={"JOBS": other})


def _user(ctx: Context) -> Setup:
    if ctx.bootstrap.engine.name != "bwrap":
        raise Skipped("the Docker engine runs every build as the sandbox's host id")
    return Setup(f"user and group id {OTHER_UID} instead of 0", uid=OTHER_UID)


def _hostname(ctx: Context) -> Setup:
    return Setup(f"hostname {OTHER_HOSTNAME} instead of {HOSTNAME}", hostname=OTHER_HOSTNAME)


def _file_ordering(ctx: Context) -> Setup:
    if not shutil.which("disorderfs"):
        raise Skipped("disorderfs is not installed: apt-get install disorderfs")
    if not Path("/dev/fuse").exists():
        raise Skipped("no /dev/fuse: disorderfs needs FUSE")
    return Setup("directory entries in shuffled order (disorderfs)", disorder=True)


def _engine(ctx: Context) -> Setup:
    try:
        engine = ctx.other_engine()
        engine.check()
    except SelfhostError as exc:
        raise Skipped(exc.message) from None
    return Setup(f"the {engine.name} engine instead of {ctx.bootstrap.engine.name}", engine=engine)


VARIATIONS: dict[str, Callable[[Context], Setup]] = {
    "build-path": _build_path,
    "time": _time,
    "locale": _locale,
    "timezone": _timezone,
    "umask": _umask,
    "jobs": _jobs,
    "user": _user,
    "hostname": _hostname,
    "file-ordering": _file_ordering,
    "engine": _engine,
}
assert tuple(VARIATIONS) == VARIATION_NAMES


def choose(names: list[str]) -> list[str]:
    """The variations named by ``--vary`` (comma-separated, repeatable); all by default."""
    chosen = [n.strip() for item in names for n in item.split(",") if n.strip()]
    if not chosen or chosen == ["all"]:
        return list(VARIATIONS)
    unknown = [n for n in chosen if n not in VARIATIONS]
    if unknown:
        raise UsageError(
            f"no variation named {', '.join(unknown)}",
            hint=f"--vary takes a comma-separated list of: {', '.join(VARIATIONS)} (or all)",
        )
    return list(dict.fromkeys(chosen))


@dataclass
class Row:
    """One rebuild: the control or a variation."""

    name: str
    what: str
    status: str = "identical"  # identical | declared | different | failed | skipped
    seconds: float = 0.0
    tree_digest: str | None = None
    message: str = ""  # why skipped, or how the build failed
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # differing artifacts
    kept: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "variation": self.name,
            "what": self.what,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "tree_digest": self.tree_digest,
            "message": self.message,
            "files": self.files,
            "kept": self.kept,
        }


@dataclass
class VerifyResult:
    recipe: Recipe
    stage: int
    input_hash: str
    tree_digest: str
    engine: str
    artifacts: list[str]
    control: Row
    rows: list[Row]
    seconds: float = 0.0

    @property
    def ran(self) -> list[Row]:
        return [r for r in self.rows if r.status != "skipped"]

    @property
    def undeclared(self) -> list[Row]:
        return [r for r in [self.control, *self.rows] if r.status in ("different", "failed")]

    def cell(self, row: Row, path: str) -> str:
        if row.status == "failed":
            return "build failed"
        found = row.files.get(path)
        if found is None:
            return "identical"
        return f"{found['cause']} (declared)" if found.get("declared") else found["cause"]

    @property
    def reproducible_percent(self) -> float:
        """Artifacts identical to the reference under every variation that ran."""
        if not self.artifacts:
            return 100.0
        rows = [self.control, *self.ran]
        bad = {p for r in rows for p in r.files} | (
            set(self.artifacts) if any(r.status == "failed" for r in rows) else set()
        )
        return 100.0 * (len(self.artifacts) - len(bad & set(self.artifacts))) / len(self.artifacts)

    def to_json(self) -> dict[str, Any]:
        differing = sorted({p for r in [self.control, *self.rows] for p in r.files})
        return {
            "compiler": self.recipe.name,
            "stage": self.stage,
            "input_hash": self.input_hash,
            "tree_digest": self.tree_digest,
            "engine": self.engine,
            "artifacts": len(self.artifacts),
            "reproducible_percent": round(self.reproducible_percent, 2),
            "undeclared": [r.name for r in self.undeclared],
            "control": self.control.to_json(),
            "variations": [r.to_json() for r in self.rows],
            "matrix": {
                p: {r.name: self.cell(r, p) for r in [self.control, *self.ran]} for p in differing
            },
            "seconds": round(self.seconds, 2),
        }


def run_verify(
    bootstrap: Bootstrap,
    recipe: Recipe,
    names: list[str],
    other_engine: Callable[[str], Engine],
) -> VerifyResult:
    """Rebuild the final stage of ``recipe`` as it was and under each named variation;
    ``other_engine(name)`` makes the engine of the ``engine`` variation."""
    started = time.monotonic()
    settings, ui, workspace = bootstrap.settings, bootstrap.ui, bootstrap.workspace
    outcome = bootstrap.run(recipe)
    final = outcome.stages[-1]
    previous = outcome.stages[-2] if len(outcome.stages) > 1 else None
    spec = bootstrap.spec(recipe, final.stage, outcome.stack, outcome.source, previous)
    reference = Side.from_manifest(
        f"stage{final.stage}", final.entry, final.manifest, recipe.prefix
    )
    jobs = str(settings.parallel_jobs)
    directory = workspace.stages_of(recipe.name)
    kept_dir = directory / "verify"
    scratch = workspace.tmp / "verify"
    other = "docker" if bootstrap.engine.name == "bwrap" else "bwrap"
    ctx = Context(bootstrap, outcome, jobs, scratch, lambda: other_engine(other))
    result = VerifyResult(
        recipe,
        final.stage,
        final.input_hash,
        final.manifest.tree_digest,
        bootstrap.engine.name,
        sorted(final.manifest.artifacts),
        Row("control", "a plain rebuild, as the reference was built"),
        [],
    )
    with workspace.locked(settings.lock_wait, on_wait=ui.info), ui.live():
        shutil.rmtree(kept_dir, ignore_errors=True)
        for name in ["control", *names]:
            if name == "control":
                row, setup = result.control, Setup(result.control.what)
            else:
                row = Row(name, "")
                result.rows.append(row)
                try:
                    setup = VARIATIONS[name](ctx)
                except Skipped as exc:
                    row.status, row.message, row.what = "skipped", str(exc), name
                    ui.warn(f"verify: {name} skipped: {exc}")
                    continue
                row.what = setup.what
            with ui.step(f"{name}: stage{final.stage} again") as step:
                _rebuild(bootstrap, ctx, spec, previous, reference, setup, row, kept_dir)
                step.status = "ok" if row.status in ("identical", "declared") else "failed"
                step.note = row.status if not row.files else f"{len(row.files)} artifact(s) differ"
    result.seconds = time.monotonic() - started
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "verify.json", result.to_json())
    tmp = directory / ".verify.html.tmp"
    tmp.write_text(render_html(result))
    os.replace(tmp, directory / "verify.html")
    return result


def _rebuild(
    bootstrap: Bootstrap,
    ctx: Context,
    spec: StageSpec,
    previous: StageResult | None,
    reference: Side,
    setup: Setup,
    row: Row,
    kept_dir: Path,
) -> None:
    """One rebuild under ``setup``, compared with the reference into ``row``."""
    outcome, recipe = ctx.outcome, spec.recipe
    engine = setup.engine or bootstrap.engine
    engine.prepare(outcome.stack, [recipe.prefix, setup.root, *setup.mount_points])
    runner = SandboxRunner(engine, outcome.stack, bootstrap.owner)
    runner.root, runner.mounts, runner.uid = setup.root, setup.mounts, setup.uid
    runner.hostname, runner.umask = setup.hostname, setup.umask
    env = {k: _moved(v, setup.root) for k, v in spec.environment(ctx.jobs).items()}
    env.update(setup.env)
    work_dir = bootstrap.cache.begin(f"{spec.key()}.verify-{row.name}")
    started = time.monotonic()
    try:
        with _disorder(work_dir / "build", runner) if setup.disorder else _nothing():
            manifest = bootstrap.build(
                spec,
                outcome.stack,
                outcome.source,
                previous,
                work_dir,
                spec.key(),
                tests=False,
                runner=runner,
                env=env,
            )
    except SelfhostError as exc:
        row.seconds = time.monotonic() - started
        row.status, row.message = "failed", exc.message
        _keep(work_dir, kept_dir / row.name, row)
        return
    row.seconds = time.monotonic() - started
    row.tree_digest = manifest.tree_digest
    side = Side.from_manifest(row.name, work_dir, manifest, recipe.prefix)
    report = compare_sides(reference, side)
    undeclared = False
    for f in report.differing:
        entry: dict[str, Any] = {
            "status": f.status,
            "cause": f.analysis.cause.value if f.analysis else f.status,
            "evidence": (f.analysis.evidence[:6] if f.analysis else []),
        }
        allowed = next(
            (a for a in recipe.verify_allow if a.vary == row.name and glob_match(a.path, f.path)),
            None,
        )
        if allowed:
            entry["declared"] = allowed.reason
        else:
            undeclared = True
        row.files[f.path] = entry
    if row.files:
        row.status = "different" if undeclared else "declared"
        manifest.write(work_dir / "manifest.json")  # a stage entry, for diff-stages
        _keep(work_dir, kept_dir / row.name, row)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)


def _moved(value: str, root: str) -> str:
    """A variable's value with the work directory at ``root`` instead of /build."""
    if root == BUILD:
        return value
    return ":".join(
        root + part[len(BUILD) :] if part == BUILD or part.startswith(BUILD + "/") else part
        for part in value.split(":")
    )


def _keep(work_dir: Path, target: Path, row: Row) -> None:
    """Keep a differing rebuild (its tree, log and manifest: the shape of a stage
    cache entry) for ``invoke diff-stages``."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    for part in ("tree", "logs", "manifest.json"):
        if (work_dir / part).exists():
            shutil.move(str(work_dir / part), target / part)
    shutil.rmtree(work_dir, ignore_errors=True)
    row.kept = str(target)


@contextlib.contextmanager
def _disorder(root: Path, runner: SandboxRunner) -> Iterator[None]:
    """The work directory seen through disorderfs, for as long as the build runs.

    disorderfs serves each request with the caller's ids (``--multi-user``: files the
    build makes are the build id's), so the build id must be able to reach the
    directory it serves: a workspace under a ``0700`` directory is out of its reach.
    So disorderfs serves the work directory from where the sandboxes' staging
    (:mod:`selfhost.stages.staging`) binds it for the build id."""
    from selfhost.stages.staging import Staging

    security = runner.engine.security
    root.mkdir(parents=True, exist_ok=True)
    view = root.parent / "disorder"
    view.mkdir(exist_ok=True)
    staging = Staging.create([root], security.host_id(security.ids.build))
    try:
        run = subprocess.run(
            [
                "disorderfs",
                "--shuffle-dirents=yes",
                "--multi-user=yes",
                "-o",
                "allow_other",
                str(staging[root]),
                str(view),
            ],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise SelfhostError(
                f"file-ordering: disorderfs failed for {root}: {run.stderr.strip()[-300:]}"
            )
        runner.root_view = view
        yield
    finally:
        runner.root_view = None
        for _ in range(50):  # busy for a moment after the last step's processes end
            subprocess.run(["fusermount", "-u", str(view)], capture_output=True)
            if not os.path.ismount(view):
                break
            time.sleep(0.1)
        staging.remove()


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


# --------------------------------------------------------------------------- HTML

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.3em}.verdict{padding:.8em 1em;border-radius:6px;font-weight:600}
.ok{background:#e6f4ea;color:#137333}.bad{background:#fce8e6;color:#a50e0e}
.warn{background:#fef7e0;color:#8a5a00}.muted{color:#777}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}code{font-size:.92em}
"""

CLASS = {
    "identical": "ok",
    "declared": "warn",
    "different": "bad",
    "failed": "bad",
    "skipped": "muted",
}


def render_html(result: VerifyResult) -> str:
    """One self-contained page: the verdict, the variations, the matrix, the evidence."""
    e = html.escape
    data = result.to_json()
    bad = result.undeclared
    verdict = (
        f"{data['reproducible_percent']:g}% of {data['artifacts']} artifacts reproducible "
        f"under every variation; "
        + (
            f"undeclared differences under: {', '.join(r.name for r in bad)}"
            if bad
            else "no undeclared difference"
        )
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>verify {e(result.recipe.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(result.recipe.name)} stage{result.stage} under variations</h1>",
        f"<p class='verdict {'bad' if bad else 'ok'}'>{e(verdict)}</p>",
        f"<p class='muted'>reference: input hash <code>{e(result.input_hash[:16])}</code>, "
        f"tree <code>{e(result.tree_digest[:16])}</code>, engine {e(result.engine)}; "
        f"{data['seconds']} s in all</p>",
        "<table><tr><th>variation</th><th>what changed</th><th>result</th><th>seconds</th>"
        "<th>note</th></tr>",
    ]
    for row in [result.control, *result.rows]:
        note = row.message or (f"{len(row.files)} artifact(s) differ" if row.files else "")
        parts.append(
            f"<tr><td><code>{e(row.name)}</code></td><td>{e(row.what)}</td>"
            f"<td class='{CLASS[row.status]}'>{e(row.status)}</td>"
            f"<td>{row.seconds:.1f}</td><td>{e(note)}</td></tr>"
        )
    parts.append("</table>")
    matrix = data["matrix"]
    ran = [result.control, *result.ran]
    if matrix:
        parts.append("<h2>artifact × variation</h2><table><tr><th>artifact</th>")
        parts += [f"<th>{e(r.name)}</th>" for r in ran]
        parts.append("</tr>")
        for path, cells in matrix.items():
            parts.append(f"<tr><td><code>{e(path)}</code></td>")
            for r in ran:
                cell = cells[r.name]
                css = "ok" if cell == "identical" else ("warn" if "declared" in cell else "bad")
                parts.append(f"<td class='{css}'>{e(cell)}</td>")
            parts.append("</tr>")
        parts.append("</table>")
        same = len(result.artifacts) - len(matrix)
        parts.append(f"<p class='muted'>{same} other artifact(s) identical everywhere</p>")
        parts.append("<h2>evidence</h2>")
        for row in ran:
            for path, f in row.files.items():
                parts.append(
                    f"<p><code>{e(row.name)}</code> · <code>{e(path)}</code>: "
                    f"{e(f['cause'])}"
                    + (f" — declared: {e(f['declared'])}" if f.get("declared") else "")
                    + "</p>"
                )
                if f["evidence"]:
                    parts.append("<pre>" + e("\n".join(f["evidence"])) + "</pre>")
    else:
        parts.append(
            f"<p>all {len(result.artifacts)} artifacts identical under every variation</p>"
        )
    parts.append("</body></html>")
    return "".join(parts)
