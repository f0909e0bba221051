"""The staged bootstrap: stage1 by stage0, stage k by stage k-1, at the same paths.

For each stage the pipeline computes the input hash, reuses the cache entry if there
is one, and otherwise builds in a sandbox of the stack:

==============  =========================================  ===========
sandbox path    what                                       access
==============  =========================================  ===========
``/``           the stack's rootfs                         read-only
``/build/src``  a fresh copy of the pristine source        read-write
``/build/home`` ``$HOME``                                  read-write
``/out``        ``$DESTDIR``, captured as the stage tree   read-write
``$PREFIX``     the previous stage's installed prefix      read-only
``/tmp``        tmpfs                                      read-write
==============  =========================================  ===========

Steps are ``build``, ``install`` and ``test`` (with ``/out`` read-only). Their output
goes to one log per stage. A failing step stops the bootstrap with the last 20 lines of
its log and a command that reproduces it in its sandbox; its work directory is kept
for that. A stage becomes complete only when its manifest is committed to the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfhost import __version__
from selfhost.compilers.recipe import FixpointPolicy, Recipe
from selfhost.compilers.sources import FetchedSource, SourceStore
from selfhost.config import Settings
from selfhost.errors import BuildError, FixpointError, TestsFailed
from selfhost.hashing import SpecialFile, scan_tree, tree_digest
from selfhost.mirror import debian_mirror
from selfhost.stages.cache import StageCache, input_hash
from selfhost.stages.diff import ArtifactComparison, compare_artifacts
from selfhost.stages.engine import Engine, Mount, Sandbox, shell_line
from selfhost.stages.environment import BUILD_DIR, DESTDIR, SRC_DIR, stage_environment
from selfhost.stages.manifest import Manifest, TestResult, select_artifacts, write_json_atomic
from selfhost.stages.security import hand_over, take_back
from selfhost.stages.stack import Stack, StackSpec, StackStore
from selfhost.ui import UI
from selfhost.workspace import Workspace

TAIL_LINES = 20


@dataclass
class StageResult:
    """One stage of a bootstrap: where it is, and whether it came from the cache."""

    stage: int
    input_hash: str
    cached: bool
    manifest: Manifest
    entry: Path

    def to_json(self) -> dict[str, Any]:
        tests = self.manifest.tests
        return {
            "stage": self.stage,
            "input_hash": self.input_hash,
            "cached": self.cached,
            "tests_passed": tests.passed if tests else None,
            "tree_digest": self.manifest.tree_digest,
            "manifest": str(self.entry / "manifest.json"),
            "artifacts": self.manifest.artifacts,
        }


@dataclass
class BootstrapResult:
    """The outcome of ``invoke bootstrap``."""

    recipe: Recipe
    engine: str
    stack: Stack
    source: FetchedSource
    stages: list[StageResult]
    comparison: ArtifactComparison | None

    @property
    def fixpoint(self) -> bool:
        """True when the last two stages' artifacts are identical after exclusions."""
        return self.comparison is not None and self.comparison.same

    def to_json(self) -> dict[str, Any]:
        cmp = self.comparison
        return {
            "compiler": self.recipe.name,
            "version": self.recipe.version,
            "engine": self.engine,
            "stack": self.stack.identity,
            "source": {"digest": self.source.digest, "origin": self.source.origin},
            "stages": [s.to_json() for s in self.stages],
            "fixpoint": self.fixpoint,
            "fixpoint_policy": self.recipe.fixpoint.value,
            "compared": [s.stage for s in self.stages[-2:]] if cmp else [],
            "differences": (cmp.different + cmp.only_left + cmp.only_right) if cmp else [],
            "excluded": [{"path": p, "reason": r} for p, r in cmp.excluded] if cmp else [],
        }


class Bootstrap:
    """Runs a staged bootstrap of one recipe in one workspace."""

    def __init__(self, settings: Settings, engine: Engine, ui: UI):
        self.settings = settings
        self.engine = engine
        self.ui = ui
        self.workspace = Workspace(settings.workspace)
        self.cache = StageCache(self.workspace.stage_cache, self.workspace.tmp)

    @property
    def owner(self) -> str:
        """Who the sandboxes belong to: this workspace (labels Docker containers)."""
        return str(self.workspace.root.resolve())

    def mirror(self) -> str:
        return debian_mirror(self.settings.mirror)

    def ensure_stack(self, recipe: Recipe) -> Stack:
        return ensure_stack(self.settings, recipe, self.ui.info)

    def run(
        self, recipe: Recipe, *, stages: int | None = None, force: bool = False
    ) -> BootstrapResult:
        """Build (or reuse) every stage and compare the last two."""
        count = stages or recipe.stages
        with self.workspace.locked(self.settings.lock_wait, on_wait=self.ui.info), self.ui.live():
            self.engine.check()
            with self.ui.step("stack") as step:
                stack = self.ensure_stack(recipe)
                step.note = stack.spec.name
            with self.ui.step("source") as step:
                source = SourceStore(self.workspace.sources, self.mirror).fetch(
                    recipe.sources, log=self.ui.info
                )
                step.note = source.origin
            with self.ui.step(f"engine {self.engine.name}"):
                self.engine.prepare(stack, [recipe.prefix])
                self.engine.remove_orphans(self.owner)
            results: list[StageResult] = []
            comparison: ArtifactComparison | None = None
            n = 0
            while True:
                n += 1
                previous = results[-1] if results else None
                with self.ui.step(f"stage{n}") as step:
                    result = self.stage(recipe, n, stack, source, previous, force=force)
                    step.status = "cached" if result.cached else "ok"
                    step.note = f"{result.input_hash[:12]}" + (" (cached)" if result.cached else "")
                results.append(result)
                if n >= 2:
                    comparison = compare_artifacts(
                        results[-2].manifest.artifacts, result.manifest.artifacts, recipe.exclude
                    )
                if not wants_another_stage(recipe, n, count, comparison):
                    break
            outcome = BootstrapResult(recipe, self.engine.name, stack, source, results, comparison)
            self._publish(outcome)
        return outcome

    # ------------------------------------------------------------------ one stage
    def environment(self, recipe: Recipe, builder: str) -> dict[str, str]:
        """The complete environment of every step of a stage (nothing else leaks in)."""
        return stage_environment(recipe, builder, str(self.settings.parallel_jobs))

    def stage_inputs(
        self, recipe: Recipe, stack: Stack, source: FetchedSource, previous: StageResult | None
    ) -> tuple[str, dict[str, Any], dict[str, str]]:
        """A stage's key, its recorded inputs and its full environment."""
        builder = recipe.builder if previous else recipe.stage0_builder
        env = self.environment(recipe, builder)
        hashed_env = {k: v for k, v in env.items() if k != "JOBS"}  # parallelism ≠ bytes
        inputs = {
            "recipe": {"name": recipe.name, "version": recipe.version, "digest": recipe.digest},
            "source": {"digest": source.digest, "origin": source.origin},
            "stack": stack.identity,
            "engine": self.engine.name,
            "builder": (
                {
                    "kind": "stage",
                    "stage": previous.stage,
                    "tree_digest": previous.manifest.tree_digest,
                    "input_hash": previous.input_hash,
                }
                if previous
                else {"kind": "stage0", "builder": env["BUILDER"]}
            ),
            "environment": hashed_env,
        }
        # The origin and the previous stage's number and key are recorded but not hashed:
        # only what can change the bytes is part of the key.
        key_inputs = {
            **inputs,
            "source": source.digest,
            "builder": (previous.manifest.tree_digest if previous else {"stage0": env["BUILDER"]}),
        }
        return input_hash(key_inputs), inputs, env

    def stage(
        self,
        recipe: Recipe,
        n: int,
        stack: Stack,
        source: FetchedSource,
        previous: StageResult | None,
        *,
        force: bool = False,
    ) -> StageResult:
        """Return stage ``n``: from the cache if its inputs are unchanged, else built."""
        key, inputs, env = self.stage_inputs(recipe, stack, source, previous)
        if not force:
            cached = self.cache.lookup(key)
            if cached:
                return StageResult(n, key, True, cached, self.cache.entry(key))
        work = self.cache.begin(key)
        builder = StageBuild(self, recipe, n, stack, source, previous, env, work)
        manifest = builder.build(key, inputs)
        entry = self.cache.commit(key, work, manifest)
        return StageResult(n, key, False, manifest, entry)

    # ------------------------------------------------------------------ results
    def _publish(self, outcome: BootstrapResult) -> None:
        """Point ``stages/<compiler>/stageN`` at the entries and write ``run.json``."""
        directory = self.workspace.stages_of(outcome.recipe.name)
        directory.mkdir(parents=True, exist_ok=True)
        names = set()
        for result in outcome.stages:
            link = directory / f"stage{result.stage}"
            names.add(link.name)
            tmp = directory / f".{link.name}.tmp"
            tmp.unlink(missing_ok=True)
            os.symlink(os.path.relpath(result.entry, directory), tmp)
            os.replace(tmp, link)
        for stale in directory.glob("stage*"):
            if stale.name not in names and stale.is_symlink():
                stale.unlink()
        write_json_atomic(directory / "run.json", outcome.to_json())


def wants_another_stage(
    recipe: Recipe, built: int, count: int, comparison: ArtifactComparison | None
) -> bool:
    """True until ``count`` stages are built; past that, only while the 'iterate' policy
    has not seen two equal stages and ``max_stages`` allows another."""
    if built < count:
        return True
    return (
        recipe.fixpoint is FixpointPolicy.ITERATE
        and comparison is not None
        and not comparison.same
        and built < recipe.max_stages
    )


def stack_spec(settings: Settings, recipe: Recipe) -> StackSpec:
    """The stack a recipe builds on: the configured suite, base packages + its own."""
    return StackSpec.make(
        settings.suite, settings.variant, (*settings.base_packages, *recipe.packages)
    )


def ensure_stack(settings: Settings, recipe: Recipe, log: Callable[[str], None]) -> Stack:
    """The recipe's stack, debootstrapped first if it is not built yet."""
    store = StackStore(settings.stacks, lambda: debian_mirror(settings.mirror))
    return store.ensure(stack_spec(settings, recipe), log=log)


def require_fixpoint(outcome: BootstrapResult) -> None:
    """Apply the recipe's policy: raise FixpointError when it is 'fail' or 'iterate'."""
    if (
        outcome.fixpoint
        or len(outcome.stages) < 2
        or outcome.recipe.fixpoint is FixpointPolicy.WARN
    ):
        return
    cmp = outcome.comparison
    assert cmp is not None
    a, b = outcome.stages[-2].stage, outcome.stages[-1].stage
    differing = cmp.different + cmp.only_left + cmp.only_right
    raise FixpointError(
        f"fixpoint not reached: stage{a} and stage{b} differ in {len(differing)} artifact(s)",
        details="\n".join(f"  {p}" for p in differing[:20]),
        hint=f"run `invoke diff-stages --compiler {outcome.recipe.name}` to see why, or "
        "declare a [[compare.exclude]] with a reason in the recipe",
    )


class StageBuild:
    """Builds one stage in its work directory."""

    def __init__(
        self,
        boot: Bootstrap,
        recipe: Recipe,
        n: int,
        stack: Stack,
        source: FetchedSource,
        previous: StageResult | None,
        env: dict[str, str],
        work: Path,
    ):
        self.boot = boot
        self.recipe = recipe
        self.n = n
        self.stack = stack
        self.source = source
        self.previous = previous
        self.env = env
        self.work = work
        self.security = boot.engine.security
        self.build_dir = work / "build"
        self.tree = work / "tree"
        self.log_path = work / "logs" / "stage.log"

    def mounts(self, *, out_writable: bool) -> tuple[Mount, ...]:
        mounts = [
            Mount(self.build_dir, BUILD_DIR, writable=True),
            Mount(self.tree, DESTDIR, writable=out_writable),
        ]
        if self.previous:
            prev_prefix = self.previous.entry / "tree" / self.recipe.prefix.lstrip("/")
            mounts.append(Mount(prev_prefix, self.recipe.prefix))
        return tuple(mounts)

    def sandbox(self, script: str, *, out_writable: bool = True) -> Sandbox:
        return Sandbox(
            stack=self.stack,
            argv=("/bin/sh", "-ec", script),
            env=tuple(self.env.items()),
            mounts=self.mounts(out_writable=out_writable),
            workdir=SRC_DIR,
            owner=self.boot.owner,
            host_id=self.security.ids.build,
        )

    def build(self, key: str, inputs: dict[str, Any]) -> Manifest:
        ui = self.boot.ui
        timings: dict[str, float] = {}
        started = time.monotonic()
        with ui.step("prepare"):
            t = time.monotonic()
            (self.build_dir / "home").mkdir(parents=True)
            self.tree.mkdir()
            self.log_path.parent.mkdir()
            if (
                self.previous
                and not (self.previous.entry / "tree" / self.recipe.prefix.lstrip("/")).is_dir()
            ):
                raise BuildError(
                    f"stage{self.previous.stage} has nothing at "
                    f"{self.recipe.prefix}; it cannot build stage{self.n}"
                )
            copy_tree(self.source.tree, self.build_dir / "src")
            # the build runs as an unprivileged host id: it may write its work
            # directory and DESTDIR, nothing else
            hand_over(self.security, self.security.ids.build, self.build_dir, self.tree)
            timings["prepare"] = time.monotonic() - t
        with open(self.log_path, "ab") as log:
            for name, script in (
                ("build", self.recipe.steps.build),
                ("install", self.recipe.steps.install),
            ):
                with ui.step(name):
                    timings[name] = self.run_step(name, script, log, BuildError)
            tests = None
            if self.recipe.steps.test.strip():
                with ui.step("test") as step:
                    offset = log.tell()
                    timings["test"] = self.run_step(
                        "test", self.recipe.steps.test, log, TestsFailed, out_writable=False
                    )
                    summary = [
                        ln for ln in tail(self.log_path, 6, offset) if not ln.startswith("==> ")
                    ]
                    tests = TestResult(self.recipe.steps.test, 0, timings["test"], summary)
                    step.note = "passed"
        with ui.step("capture"):
            t = time.monotonic()
            shutil.rmtree(self.build_dir)
            take_back(self.security, self.tree)  # root's again, and no setuid bits
            try:
                files = scan_tree(self.tree)
            except SpecialFile as exc:
                raise BuildError(
                    f"stage{self.n}: the install step left {exc.kind} at {DESTDIR}/{exc.relative}",
                    details=f"on the host: {exc.path}",
                    hint="a stage tree may hold only files, directories and symlinks; "
                    "remove it in the install step (or do not install it)",
                ) from None
            if not (self.tree / self.recipe.prefix.lstrip("/")).is_dir():
                raise BuildError(
                    f"stage{self.n}: the install step put nothing under $DESTDIR$PREFIX "
                    f"({DESTDIR}{self.recipe.prefix})",
                    hint="install into $DESTDIR$PREFIX (for example make install DESTDIR=$DESTDIR)",
                )
            timings["capture"] = time.monotonic() - t
        timings["total"] = time.monotonic() - started
        return Manifest(
            compiler=self.recipe.name,
            version=self.recipe.version,
            prefix=self.recipe.prefix,
            stage=self.n,
            input_hash=key,
            inputs=inputs,
            tree_digest=tree_digest(files),
            files=files,
            artifacts=select_artifacts(files, self.recipe.prefix, self.recipe.artifacts),
            tests=tests,
            timings=timings,
            logs={"stage": "logs/stage.log"},
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            selfhost_version=__version__,
        )

    def run_step(
        self,
        name: str,
        script: str,
        log: Any,
        error: Callable[..., Exception],
        *,
        out_writable: bool = True,
    ) -> float:
        """Run one step; raise ``error`` with the log tail and a reproduction command."""
        sandbox = self.sandbox(script, out_writable=out_writable)
        log.write(f"==> stage{self.n} {name}: {script.strip()}\n".encode())
        log.flush()
        offset = log.tell()
        result = self.boot.engine.run(sandbox, log, timeout=self.recipe.steps.timeout)
        log.write(
            f"==> stage{self.n} {name}: exit {result.exit_code} ({result.seconds:.1f}s)\n".encode()
        )
        log.flush()
        if result.exit_code != 0:
            what = (
                f"timed out after {self.recipe.steps.timeout}s"
                if result.timed_out
                else f"failed with exit code {result.exit_code}"
            )
            lines = tail(self.log_path, TAIL_LINES + 1, offset)[:-1]
            raise error(
                f"stage{self.n} {name} step {what}",
                details=f"last {len(lines)} lines of {self.log_path}:\n"
                + "\n".join(f"  | {line}" for line in lines)
                + "\n\nreproduce this step in its sandbox with:\n  "
                + shell_line(self.boot.engine.command_line(sandbox)),
                hint=f"the work directory {self.work} is kept for inspection; "
                "the stage was not recorded as complete",
            )
        return result.seconds


def copy_tree(source: Path, target: Path) -> None:
    """Copy a pristine source tree (``cp -a`` keeps modes, links and times, and is fast)."""
    subprocess.run(["cp", "-a", "--", f"{source}/.", str(target)], check=True)


def tail(path: Path, count: int, offset: int = 0) -> list[str]:
    """The last ``count`` lines of a file from ``offset`` on."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    return data.decode("utf-8", "replace").splitlines()[-count:]
