"""The staged bootstrap: stage1 by stage0, stage k by stage k-1, at the same paths.

For each stage the pipeline computes the input hash (:class:`~selfhost.stages.builder.
StageSpec`), reuses the cache entry if there is one (verified against its manifest),
and otherwise builds it with the one stage builder (:mod:`selfhost.stages.builder`) in
sandboxes of the build stack (:class:`~selfhost.stages.runners.SandboxRunner`).

A failing step stops the bootstrap with the last 20 lines of its log and a command that
reproduces it in its sandbox; its work directory is kept for that. A stage becomes
complete only when its manifest is committed to the cache. Tests are recorded per stage
and per test command: a changed test command re-runs the tests of a cached stage (on a
fresh build of it, which must give the same tree), it does not make a new stage.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfhost import __version__
from selfhost.compilers.recipe import FixpointPolicy, Recipe
from selfhost.compilers.sources import Sources, fetch_sources
from selfhost.config import Settings
from selfhost.errors import BuildError, FixpointError, TestsFailed
from selfhost.hashing import scan_tree, tree_digest
from selfhost.mirror import debian_mirror
from selfhost.stages.builder import BuilderRef, OutputProblem, StageSpec, StepFailed, Work, build
from selfhost.stages.cache import StageCache
from selfhost.stages.diff import ArtifactComparison, compare_artifacts
from selfhost.stages.engine import Engine
from selfhost.stages.manifest import Manifest, TestResult, select_artifacts, write_json_atomic
from selfhost.stages.runners import SandboxRunner
from selfhost.stages.stack import Stack, StackSpec, StackStore
from selfhost.ui import UI
from selfhost.workspace import Workspace


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
    source: Sources
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


#: Fetches a stage by input hash into the given (new) directory: the whole DESTDIR tree,
#: and ``{"tree_digest", "origin", "tests"}``; None if the store has no such stage.
RemoteStages = Callable[[str, Path], "dict[str, Any] | None"]


class Bootstrap:
    """Runs a staged bootstrap of one recipe in one workspace."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        ui: UI,
        *,
        remote: RemoteStages | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.ui = ui
        self.remote = remote
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
                source = fetch_sources(self.workspace.sources, self.mirror, recipe, self.ui.info)
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
    def spec(
        self, recipe: Recipe, n: int, stack: Stack, source: Sources, previous: StageResult | None
    ) -> StageSpec:
        """What defines stage ``n``."""
        builder = (
            BuilderRef(stage0=recipe.stage0_builder)
            if previous is None
            else BuilderRef(
                tree_digest=previous.manifest.tree_digest,
                stage=previous.stage,
                input_hash=previous.input_hash,
            )
        )
        return StageSpec(
            recipe=recipe, stage=n, sources=source.digests, stack=stack.identity, builder=builder
        )

    def stage(
        self,
        recipe: Recipe,
        n: int,
        stack: Stack,
        source: Sources,
        previous: StageResult | None,
        *,
        force: bool = False,
    ) -> StageResult:
        """Return stage ``n``: from the cache if its inputs are unchanged, else built."""
        spec = self.spec(recipe, n, stack, source, previous)
        key = spec.key()
        if not force:
            cached = self.cache.lookup(key) or self.fetch_remote(spec, key)
            if cached:
                result = StageResult(n, key, True, cached, self.cache.entry(key))
                self.ensure_tests(result, spec, stack, source, previous)
                return result
        work = self.cache.begin(key)
        manifest = self.build(spec, stack, source, previous, work, key)
        entry = self.cache.commit(key, work, manifest)
        return StageResult(n, key, False, manifest, entry)

    def fetch_remote(self, spec: StageSpec, key: str) -> Manifest | None:
        """A stage the platform's stage store has (built by a compile worker with the
        same inputs), verified and committed to the local cache; None if it has none."""
        if self.remote is None:
            return None
        work_dir = self.cache.begin(key)
        try:
            found = self.remote(key, work_dir / "tree")
            if found is None:
                return None
            files = scan_tree(work_dir / "tree")
            digest = tree_digest(files)
            if digest != found["tree_digest"]:
                raise BuildError(
                    f"the platform's stage {key[:12]} has tree digest {digest[:16]}, "
                    f"not the {str(found['tree_digest'])[:16]} it was stored with",
                    hint="it was not used; run with --force, or without --from-app",
                )
            recipe = spec.recipe
            (work_dir / "logs").mkdir()
            (work_dir / "logs" / "stage.log").write_text(
                f"fetched from the platform's stage store ({found['origin']})\n"
            )
            manifest = Manifest(
                compiler=recipe.name,
                version=recipe.version,
                prefix=recipe.prefix,
                stage=spec.stage,
                input_hash=key,
                inputs=spec.record("platform", origin=found["origin"]),
                tree_digest=digest,
                files=files,
                artifacts=select_artifacts(files, recipe.prefix, recipe.artifacts),
                tests=TestResult.from_json(found.get("tests")),
                timings={},
                logs={"stage": "logs/stage.log"},
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                selfhost_version=__version__,
            )
            self.cache.commit(key, work_dir, manifest)
            self.ui.info(f"stage{spec.stage}: {key[:12]} from the platform ({found['origin']})")
            return manifest
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def build(
        self,
        spec: StageSpec,
        stack: Stack,
        source: Sources,
        previous: StageResult | None,
        work_dir: Path,
        key: str,
        *,
        tests: bool = True,
        runner: SandboxRunner | None = None,
        env: dict[str, str] | None = None,
    ) -> Manifest:
        """Build one stage in ``work_dir`` (``build/``, ``tree/``, ``logs/``); ``runner``
        and ``env`` replace the bootstrap's (``invoke verify``'s variations)."""
        recipe = spec.recipe
        work = Work(
            root=work_dir / "build", out=work_dir / "tree", log=work_dir / "logs" / "stage.log"
        )
        builder_tree = None
        if previous is not None:
            builder_tree = previous.entry / "tree" / recipe.prefix.lstrip("/")
            if not builder_tree.is_dir():
                raise BuildError(
                    f"stage{previous.stage} has nothing at {recipe.prefix}; it "
                    f"cannot build stage{spec.stage}"
                )
        runner = runner or SandboxRunner(self.engine, stack, self.owner)
        try:
            outcome = build(
                spec,
                runner,
                work,
                source.trees,
                builder_tree,
                jobs=str(self.settings.parallel_jobs),
                tests=tests,
                patches=source.patches,
                step=self.ui.step,
                env=env,
            )
        except StepFailed as exc:
            error = TestsFailed if exc.step == "test" else BuildError
            what = (
                f"timed out after {recipe.steps.timeout}s"
                if exc.timed_out
                else f"failed with exit code {exc.exit_code}"
            )
            raise error(
                f"stage{spec.stage} {exc.step} step {what}",
                details=f"last {len(exc.tail)} lines of {work.log}:\n"
                + "\n".join(f"  | {line}" for line in exc.tail)
                + (
                    "\n\nreproduce this step in its sandbox with:\n  " + exc.reproduce
                    if exc.reproduce
                    else ""
                ),
                hint=f"the work directory {work_dir} is kept for inspection; "
                "the stage was not recorded as complete",
            ) from None
        except OutputProblem as exc:
            raise BuildError(
                f"stage{spec.stage}: {exc}",
                hint="install into $DESTDIR$PREFIX (make install DESTDIR=$DESTDIR); "
                "a stage tree may hold only files, directories and symlinks",
            ) from None
        return Manifest(
            compiler=recipe.name,
            version=recipe.version,
            prefix=recipe.prefix,
            stage=spec.stage,
            input_hash=key,
            inputs=spec.record(runner.name, engine=runner.engine.name),
            tree_digest=outcome.tree_digest,
            files=outcome.files,
            artifacts=select_artifacts(outcome.files, recipe.prefix, recipe.artifacts),
            tests=TestResult.from_json(outcome.tests),
            timings=outcome.timings,
            logs={"stage": "logs/stage.log"},
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            selfhost_version=__version__,
        )

    def ensure_tests(
        self,
        result: StageResult,
        spec: StageSpec,
        stack: Stack,
        source: Sources,
        previous: StageResult | None,
    ) -> None:
        """A cached stage whose tests ran under another test command gets the current
        one run, on a fresh build of it (in tmp/, never recorded as a stage), and the
        result recorded in its entry's ``tests.json``; the stage stays as it is."""
        command = spec.recipe.steps.test.strip()
        if not command or self.cache.test_result(result.entry, command) is not None:
            return
        work_dir = self.cache.begin(f"{result.input_hash}.tests")
        with self.ui.step("tests (the test command changed)"):
            fresh = self.build(spec, stack, source, previous, work_dir, result.input_hash)
        if fresh.tree_digest != result.manifest.tree_digest:
            raise BuildError(
                f"stage{spec.stage} built again to run its new test command gave another tree "
                f"({fresh.tree_digest[:16]} instead of {result.manifest.tree_digest[:16]})",
                hint="the build is not reproducible; `invoke diff-stages --left "
                f"{work_dir}/tree --right {result.entry}/tree` shows why",
            )
        assert fresh.tests is not None
        self.cache.record_test(result.entry, fresh.tests.to_json())
        shutil.rmtree(work_dir, ignore_errors=True)

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


def stack_spec(settings: Settings, recipe: Recipe, *, run: bool = False) -> StackSpec:
    """The stack a recipe builds on: its suite (or the configured one), the base
    packages and its own (stage0's too). ``run``: the stack its slug's dynos run on,
    without stage0's packages."""
    packages = recipe.run_packages if run else recipe.packages
    return StackSpec.make(
        recipe.suite or settings.suite, settings.variant, (*settings.base_packages, *packages)
    )


def ensure_stack(
    settings: Settings, recipe: Recipe, log: Callable[[str], None], *, run: bool = False
) -> Stack:
    """The recipe's build (or run) stack, debootstrapped first if it is not built yet."""
    store = StackStore(settings.stacks, lambda: debian_mirror(settings.mirror))
    return store.ensure(stack_spec(settings, recipe, run=run), log=log)


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
