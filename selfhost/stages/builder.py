"""One stage builder: a stage from (recipe, sources, stack, builder, environment).

Every place that builds a stage uses this module, through a :class:`Runner` that says
where the steps run:

- ``invoke bootstrap`` (:mod:`selfhost.stages.pipeline`): each step in a fresh sandbox
  of the stack (:class:`selfhost.stages.runners.SandboxRunner`);
- a compile worker's ``stage`` and ``self-rebuild`` jobs, and a slug's ``bin/rebuild``:
  the dyno is already the sandbox (:class:`selfhost.stages.runners.DynoRunner`).

So the same inputs give the same input hash (:meth:`StageSpec.key`) and, for a
reproducible compiler, the same tree digest wherever they are built: the layout is
the same everywhere::

    /build/<group>      each source group (the main one, /build/src, is $SRC and the
                        working directory), modes and mtimes normalised
    /build/home         $HOME
    /build/out          $DESTDIR (read-only for the test step in a sandbox; checked
                        unchanged after it elsewhere)
    $PREFIX             the building stage, read-only (stage 2 and later)

and so is the environment (:func:`stage_environment`): ``PATH`` (the recipe may extend
it), ``HOME``, ``LC_ALL=C.UTF-8``, ``TZ=UTC``, ``SOURCE_DATE_EPOCH``, ``PREFIX``,
``DESTDIR``, ``SRC``, ``BUILDER``, the recipe's ``[env]``, ``JOBS`` and ``STAGE`` (the
last two not part of the input hash).

This module imports nothing heavy: worker dynos run it on the stack's own Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from selfhost.compilers.recipe import MAIN, Recipe
from selfhost.hashing import SpecialFile, digest_json, scan_tree, tree_digest

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD = "/build"
SRC = f"{BUILD}/{MAIN}"
HOME = f"{BUILD}/home"
DESTDIR = f"{BUILD}/out"
#: Bump when the meaning of an input changes, to invalidate every stored stage.
KEY_FORMAT = 2
#: Debian's patch series, applied in the build's own sandbox before the build step.
PATCH_SCRIPT = """\
[ -f debian/patches/series ] || exit 0
sed -e 's/#.*//' debian/patches/series | while read -r patch options; do
  [ -n "$patch" ] || continue
  echo "applying debian/patches/$patch"
  patch -s -N ${options:--p1} < "debian/patches/$patch"
done
"""


class StepFailed(Exception):
    """A step exited non-zero (or timed out); the caller turns it into its own error."""

    def __init__(
        self, step: str, exit_code: int, timed_out: bool, tail: list[str], reproduce: str | None
    ):
        super().__init__(f"{step} failed with exit code {exit_code}")
        self.step = step
        self.exit_code = exit_code
        self.timed_out = timed_out
        self.tail = tail
        self.reproduce = reproduce


class OutputProblem(Exception):
    """DESTDIR holds something a stage may not (a FIFO...), or nothing at the prefix."""


def stage_environment(recipe: Recipe, builder: str, jobs: str, stage: int) -> dict[str, str]:
    """Every variable a stage's steps see, and nothing else (see docs/recipes.md)."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": HOME,
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch),
        "PREFIX": recipe.prefix,
        "DESTDIR": DESTDIR,
        "SRC": SRC,
    }
    env["BUILDER"] = recipe.expand(builder, env)
    for key, value in recipe.env:
        env[key] = recipe.expand(value, env)
    env["JOBS"] = jobs
    env["STAGE"] = str(stage)
    return env


def hashed_environment(env: dict[str, str]) -> dict[str, str]:
    """What of the environment can change the bytes (parallelism and the stage number
    are recorded, not hashed: a fixpoint shows up as equal keys)."""
    return {k: v for k, v in env.items() if k not in ("JOBS", "STAGE")}


@dataclass(frozen=True)
class BuilderRef:
    """Who builds a stage: the recipe's stage0 compiler, or a built stage."""

    stage0: str | None = None  # the stage0 builder command (stage 1)
    tree_digest: str | None = None  # the building stage's tree digest
    stage: int | None = None  # recorded only
    input_hash: str | None = None  # recorded only

    def key(self) -> Any:
        return {"stage0": self.stage0} if self.stage0 is not None else self.tree_digest

    def record(self) -> dict[str, Any]:
        if self.stage0 is not None:
            return {"kind": "stage0", "builder": self.stage0}
        return {
            "kind": "stage",
            "stage": self.stage,
            "tree_digest": self.tree_digest,
            "input_hash": self.input_hash,
        }


@dataclass(frozen=True)
class StageSpec:
    """Everything that defines one stage."""

    recipe: Recipe
    stage: int
    sources: dict[str, str]  # source group -> normalised tree digest
    stack: dict[str, Any]  # the build stack's identity
    builder: BuilderRef
    distcc: bool = False

    def environment(self, jobs: str) -> dict[str, str]:
        command = (
            self.recipe.stage0_builder if self.builder.stage0 is not None else self.recipe.builder
        )
        return stage_environment(self.recipe, command, jobs, self.stage)

    def key(self) -> str:
        """The input hash: only what can change the stage's bytes."""
        return digest_json(
            {
                "key_format": KEY_FORMAT,
                "recipe": self.recipe.digest,
                "sources": self.sources,
                "stack": {
                    "digest": self.stack.get("digest"),
                    "packages_digest": self.stack.get("packages_digest"),
                },
                "builder": self.builder.key(),
                "environment": hashed_environment(self.environment("")),
                "distcc": self.distcc,
            }
        )

    def record(self, runner: str, **more: Any) -> dict[str, Any]:
        """The inputs as a manifest records them (with what is not hashed, too)."""
        return {
            **more,
            "recipe": {
                "name": self.recipe.name,
                "version": self.recipe.version,
                "digest": self.recipe.digest,
            },
            "sources": self.sources,
            "stack": self.stack,
            "builder": self.builder.record(),
            "environment": hashed_environment(self.environment("")),
            "distcc": self.distcc,
            "runner": runner,
        }


@dataclass(frozen=True)
class Work:
    """A stage's work directory, as the building process sees it."""

    root: Path  # what the steps see as /build
    out: Path  # what the steps see as /build/out ($DESTDIR)
    log: Path  # the stage's log

    def group(self, name: str) -> Path:
        return self.root / name


@dataclass
class StepResult:
    exit_code: int
    seconds: float
    timed_out: bool = False


class Runner(Protocol):
    """Where a stage's steps run."""

    name: str

    def prepare(self, work: Work, builder_tree: Path | None, prefix: str) -> None:
        """Make ``work`` writable to the steps and put the builder at the prefix."""

    def run(
        self,
        step: str,
        script: str,
        cwd: str,
        env: dict[str, str],
        work: Work,
        log: IO[bytes],
        *,
        out_writable: bool,
        timeout: float | None,
    ) -> StepResult:
        """Run one step (``/bin/sh -ec script``) with exactly ``env``; output to ``log``."""

    def reproduce(
        self, script: str, cwd: str, env: dict[str, str], work: Work, out_writable: bool
    ) -> str | None:
        """A shell command that runs the same step by hand, if there is one."""

    def finish(self, work: Work) -> None:
        """The steps are over: take ``work.out`` back (owner, bits), undo the builder."""


@dataclass
class Outcome:
    """What :func:`build` made: the manifest data, for the caller to record."""

    tree_digest: str
    files: list[Any]
    tests: dict[str, Any] | None
    timings: dict[str, float]


def copy_sources(sources: dict[str, Path], work: Work, mtime: int) -> None:
    """Each source group at /build/<group>, a fresh copy with normalised mtimes (modes
    are normalised in the source store and in slugs alike)."""
    for name, tree in sources.items():
        target = work.group(name)
        subprocess.run(["cp", "-a", "--", f"{tree}/.", str(target)], check=True)
        for directory, dirs, files in os.walk(target):
            for entry in (*dirs, *files):
                os.utime(os.path.join(directory, entry), (mtime, mtime), follow_symlinks=False)
        os.utime(target, (mtime, mtime))


def build(
    spec: StageSpec,
    runner: Runner,
    work: Work,
    sources: dict[str, Path],
    builder_tree: Path | None,
    *,
    jobs: str,
    tests: bool = True,
    patches: tuple[str, ...] = (),
    step: Callable[[str], Any] | None = None,
    env: dict[str, str] | None = None,
) -> Outcome:
    """Build one stage into ``work.out``; raise :class:`StepFailed` or
    :class:`OutputProblem`. ``patches`` names the source groups whose Debian patch
    series is applied first. ``step(name)`` is a context manager factory for progress
    (the UI's steps locally, the job's progress on a worker). ``env`` replaces the
    spec's environment (a worker's distcc wrapper: ``distcc`` is in the key)."""
    recipe = spec.recipe
    env = env if env is not None else spec.environment(jobs)
    timings: dict[str, float] = {}
    started = time.monotonic()

    def timed(name: str) -> Any:
        return step(name) if step else _null()

    with timed("prepare"):
        t = time.monotonic()
        for path in (work.root, work.out, work.root / "home", work.log.parent):
            path.mkdir(parents=True, exist_ok=True)
        copy_sources(sources, work, recipe.source_date_epoch)
        runner.prepare(work, builder_tree, recipe.prefix)
        timings["prepare"] = time.monotonic() - t
    test_result = None
    try:
        with open(work.log, "ab") as log:
            plan = [(f"patch {group}", PATCH_SCRIPT, f"{BUILD}/{group}", True) for group in patches]
            plan += [
                ("build", recipe.steps.build, SRC, True),
                ("install", recipe.steps.install, SRC, True),
            ]
            for name, script, cwd, writable in plan:
                with timed(name):
                    timings[name] = _step(
                        runner, name, script, cwd, env, work, log, recipe, writable
                    )
            if tests and recipe.steps.test.strip():
                with timed("test"):
                    before = _digest(work.out) if not runner_seals_out(runner) else None
                    offset = log.tell()
                    timings["test"] = _step(
                        runner, "test", recipe.steps.test, SRC, env, work, log, recipe, False
                    )
                    if before is not None and _digest(work.out) != before:
                        raise OutputProblem("the test step changed DESTDIR")
                    summary = [ln for ln in tail(work.log, 6, offset) if not ln.startswith("==> ")]
                    test_result = {
                        "command": recipe.steps.test,
                        "exit_code": 0,
                        "passed": True,
                        "seconds": round(timings["test"], 3),
                        "summary": summary,
                    }
    finally:
        runner.finish(work)
    with timed("capture"):
        t = time.monotonic()
        for name in (*sources, "home"):
            shutil.rmtree(work.group(name), ignore_errors=True)
        try:
            files = scan_tree(work.out)
        except SpecialFile as exc:
            raise OutputProblem(
                f"the install step left {exc.kind} at {DESTDIR}/{exc.relative}"
            ) from None
        if not (work.out / recipe.prefix.lstrip("/")).is_dir():
            raise OutputProblem(
                f"the install step put nothing under $DESTDIR$PREFIX ({DESTDIR}{recipe.prefix})"
            )
        timings["capture"] = time.monotonic() - t
    timings["total"] = time.monotonic() - started
    return Outcome(tree_digest(files), files, test_result, timings)


def runner_seals_out(runner: Runner) -> bool:
    """Does the runner make DESTDIR read-only for the test step by itself?"""
    return bool(getattr(runner, "seals_out", False))


def _digest(path: Path) -> str:
    return tree_digest(scan_tree(path))


def _step(
    runner: Runner,
    name: str,
    script: str,
    cwd: str,
    env: dict[str, str],
    work: Work,
    log: IO[bytes],
    recipe: Recipe,
    writable: bool,
) -> float:
    log.write(f"==> stage{env['STAGE']} {name}: {script.strip()}\n".encode())
    log.flush()
    offset = log.tell()
    result = runner.run(
        name, script, cwd, env, work, log, out_writable=writable, timeout=recipe.steps.timeout
    )
    log.write(
        f"==> stage{env['STAGE']} {name}: exit {result.exit_code} "
        f"({result.seconds:.1f}s)\n".encode()
    )
    log.flush()
    if result.exit_code != 0:
        lines = tail(work.log, 21, offset)[:-1]
        raise StepFailed(
            name,
            result.exit_code,
            result.timed_out,
            lines,
            runner.reproduce(script, cwd, env, work, writable),
        )
    return result.seconds


def tail(path: Path, count: int, offset: int = 0) -> list[str]:
    """The last ``count`` lines of a file from ``offset`` on."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    return data.decode("utf-8", "replace").splitlines()[-count:]


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
