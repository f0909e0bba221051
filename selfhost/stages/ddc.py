"""Diverse double-compiling (David A. Wheeler's DDC) with the one stage builder.

``invoke ddc --compiler tcc --stage0 default --stage0 tcc``: for each stage0 the recipe
declares (``[stage0]`` is ``default``; others in ``[stage0.alternatives.NAME]``):

1. stage1 is built from the pinned source by that stage0, on a build stack that has the
   stage0's packages (its own stack: Debian's ``tcc`` is not in the default one);
2. stage2 is built by that stage1 on the **same** stack for every stage0 (the recipe's
   default build stack), so that nothing but the stage1 differs between them.

If the stage1s differ (they do: different compilers) but every stage2 is byte-identical,
the compiler's binary corresponds to its source: a trojan in one stage0 would have to be
in all of them, unrelated as they are, to survive. Both stages go through the stage
cache like any bootstrap's (a stage1 built by gcc is the bootstrap's own stage1).

The result, ``ddc.json`` in the workspace's stages directory of the recipe, records for
each stage0 the hashes of what it was made of: the stage0 compiler's executable (as the
stack resolves it), the C library, the kernel headers and libc headers (a digest of
``/usr/include``) and the linker; the stack identity (every package version); and the
input hash and tree digest of its stage1 and stage2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfhost.compilers.recipe import Recipe, Stage0
from selfhost.compilers.sources import fetch_sources
from selfhost.errors import UsageError
from selfhost.hashing import scan_tree, tree_digest
from selfhost.stages.pipeline import Bootstrap, StageResult, ensure_stack
from selfhost.stages.stack import Stack

LIBC = ("usr/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6")
LINKER = ("usr/bin/ld", "usr/bin/x86_64-linux-gnu-ld.bfd", "usr/bin/ld.bfd")


@dataclass
class Diverse:
    """One stage0's double compile."""

    stage0: Stage0
    stack: Stack
    stage1: StageResult
    stage2: StageResult
    tools: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "stage0": self.stage0.to_json(),
            "stack": self.stack.identity,
            "tools": self.tools,
            "stage1": self.stage1.to_json(),
            "stage2": self.stage2.to_json(),
        }


@dataclass
class DdcResult:
    recipe: Recipe
    runs: list[Diverse]
    seconds: float

    @property
    def identical(self) -> bool:
        return len({r.stage2.manifest.tree_digest for r in self.runs}) == 1

    def to_json(self) -> dict[str, Any]:
        return {
            "compiler": self.recipe.name,
            "identical": self.identical,
            "stage2_tree_digests": {
                r.stage0.name: r.stage2.manifest.tree_digest for r in self.runs
            },
            "stage1_tree_digests": {
                r.stage0.name: r.stage1.manifest.tree_digest for r in self.runs
            },
            "runs": [r.to_json() for r in self.runs],
            "seconds": round(self.seconds, 2),
        }


def choose_stage0s(recipe: Recipe, names: list[str]) -> list[Stage0]:
    """The stage0s named on the command line (default: all the recipe declares)."""
    declared = {s.name: s for s in recipe.stage0s}
    if not names:
        names = list(declared)
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise UsageError(
            f"{recipe.name} declares no stage0 named {', '.join(unknown)}",
            hint=f"it declares: {', '.join(declared)} (add [stage0.alternatives.NAME] "
            f"tables to {recipe.path or 'the recipe'})",
        )
    if len(set(names)) < 2:
        raise UsageError(
            "diverse double-compiling needs at least two different stage0s",
            hint=f"e.g. --stage0 {' --stage0 '.join(list(declared)[:2])}",
        )
    return [declared[n] for n in dict.fromkeys(names)]


def run_ddc(bootstrap: Bootstrap, recipe: Recipe, stage0s: list[Stage0]) -> DdcResult:
    """Double-compile ``recipe`` from every stage0; write ``ddc.json``."""
    started = time.monotonic()
    settings, ui, engine = bootstrap.settings, bootstrap.ui, bootstrap.engine
    workspace = bootstrap.workspace
    runs: list[Diverse] = []
    with workspace.locked(settings.lock_wait, on_wait=ui.info), ui.live():
        engine.check()
        with ui.step("stack") as step:
            common = ensure_stack(settings, recipe, ui.info)
            step.note = f"{common.spec.name} (every stage2 is built here)"
        with ui.step("source") as step:
            source = fetch_sources(workspace.sources, bootstrap.mirror, recipe, ui.info)
            step.note = source.origin
        engine.prepare(common, [recipe.prefix])
        for stage0 in stage0s:
            variant = dataclasses.replace(
                recipe, stage0_builder=stage0.builder, stage0_packages=stage0.packages
            )
            with ui.step(f"{stage0.name}: stack") as step:
                own = ensure_stack(settings, variant, ui.info)
                engine.prepare(own, [recipe.prefix])
                step.note = own.spec.name
            with ui.step(f"{stage0.name}: stage1 by {stage0.builder}") as step:
                first = bootstrap.stage(variant, 1, own, source, None)
                step.status = "cached" if first.cached else "ok"
                step.note = first.manifest.tree_digest[:12]
            with ui.step(f"{stage0.name}: stage2 by its stage1") as step:
                second = bootstrap.stage(variant, 2, common, source, first)
                step.status = "cached" if second.cached else "ok"
                step.note = second.manifest.tree_digest[:12]
            runs.append(Diverse(stage0, own, first, second, tools_of(own, stage0)))
    result = DdcResult(recipe, runs, time.monotonic() - started)
    out = workspace.stages_of(recipe.name) / "ddc.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return result


def tools_of(stack: Stack, stage0: Stage0) -> dict[str, Any]:
    """sha256 of the stage0 compiler, the C library and the linker of a stack, and the
    digest of its ``/usr/include`` (the headers every stage compiles against)."""
    root = stack.rootfs.resolve()
    found: dict[str, Any] = {"compiler": None, "libc": None, "linker": None, "headers": None}
    compiler = _resolve(root, stage0.builder)
    if compiler:
        found["compiler"] = {
            "path": "/" + str(compiler.relative_to(root)),
            "sha256": _sha(compiler),
        }
    for key, candidates in (("libc", LIBC), ("linker", LINKER)):
        for rel in candidates:
            path = _resolve(root, "/" + rel)
            if path:
                found[key] = {"path": "/" + str(path.relative_to(root)), "sha256": _sha(path)}
                break
    include = root / "usr" / "include"
    if include.is_dir():
        found["headers"] = {"path": "/usr/include", "tree_digest": tree_digest(scan_tree(include))}
    return found


def _resolve(root: Path, command: str) -> Path | None:
    """A command (or absolute path) as the stack resolves it, symlinks followed inside
    the stack's root."""
    candidates = (
        [command]
        if command.startswith("/")
        else [
            f"/usr/bin/{command}",
            f"/bin/{command}",
            f"/usr/local/bin/{command}",
        ]
    )
    for candidate in candidates:
        path = root / candidate.lstrip("/")
        for _ in range(40):  # follow links within the root
            if not path.is_symlink():
                break
            target = os.readlink(path)
            path = (root / target.lstrip("/")) if target.startswith("/") else path.parent / target
        if path.is_file():
            return path.resolve()
    return None


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
