"""``bin/rebuild``: rebuild a slug's compiler in the dyno it runs in, and compare.

Stage 1 is built by the slug's own compiler (at its prefix), each next stage by the
previous one, with the one stage builder (:mod:`selfhost.stages.builder`) and the
dyno itself as the runner: the same layout, environment and input hashes as ``invoke
bootstrap``. The last stage is then compared with the slug's, byte for byte (tree
digests): exit 0 when identical, 1 when not, 2 when a step failed.

    bin/rebuild [STAGES] [--no-test]

Runs on the stack's own Python with the selfhost vendored in the slug.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from selfhost.compilers.recipe import Recipe, load_recipe
from selfhost.stages.builder import (
    BuilderRef,
    OutputProblem,
    StageSpec,
    StepFailed,
    Work,
    build,
)
from selfhost.stages.runners import DynoRunner

APP = Path("/app")
BUILD = Path("/build")


def slug_meta(app: Path = APP) -> dict[str, Any]:
    return json.loads((app / "selfhost.json").read_text())


def slug_recipe(meta: dict[str, Any], app: Path = APP) -> Recipe:
    """The recipe the slug's compiler was bootstrapped with, at the slug's prefix."""
    recipe = load_recipe(app / "vendor" / "recipes" / f"{meta['compiler']}.toml")
    return replace(recipe, prefix=meta["prefix"])


def slug_sources(meta: dict[str, Any], app: Path = APP) -> dict[str, Path]:
    """The source groups the slug ships (vendor/src/<group>), by name."""
    return {group: app / "vendor" / "src" / group for group in meta["sources"]}


def dyno_work(groups: Iterable[str] = ()) -> Work:
    """A dyno's stage work directory: /build itself (the steps see the same paths as in
    a sandbox), emptied of an earlier stage's leftovers."""
    for name in ("out", "home", *groups):
        shutil.rmtree(BUILD / name, ignore_errors=True)
    (BUILD / "stage.log").unlink(missing_ok=True)
    return Work(root=BUILD, out=BUILD / "out", log=BUILD / "stage.log")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    tests = "--no-test" not in args
    numbers = [a for a in args if a != "--no-test"]
    meta = slug_meta()
    recipe = slug_recipe(meta)
    sources = slug_sources(meta)
    missing = [str(p) for p in sources.values() if not p.is_dir()]
    if missing:
        print(
            f"rebuild: this slug has no source ({', '.join(missing)}): it cannot rebuild "
            "its compiler",
            file=sys.stderr,
        )
        return 2
    count = int(numbers[0]) if numbers and numbers[0].isdigit() else recipe.stages
    builder = BuilderRef(
        tree_digest=meta["tree_digest"], stage=meta["stage"], input_hash=meta["input_hash"]
    )
    builder_tree: Path = Path(recipe.prefix)
    digest = ""
    for n in range(1, count + 1):
        spec = StageSpec(
            recipe=recipe, stage=n, sources=meta["sources"], stack=meta["built_on"], builder=builder
        )
        work = dyno_work(sources)
        print(
            f"==> stage{n}: built by {'the slug' if n == 1 else f'stage{n - 1}'} "
            f"(input hash {spec.key()[:16]})",
            flush=True,
        )
        try:
            outcome = build(
                spec,
                DynoRunner(echo=print),
                work,
                sources,
                builder_tree,
                jobs=str(os.cpu_count() or 1),
                tests=tests,
                patches=tuple(meta.get("patches", ())),
            )
        except (StepFailed, OutputProblem) as exc:
            print(f"rebuild: stage{n}: {exc}", file=sys.stderr)
            return 2
        digest = outcome.tree_digest
        print(f"    stage{n}: tree digest {digest[:16]}", flush=True)
        builder = BuilderRef(tree_digest=digest, stage=n, input_hash=spec.key())
        kept = BUILD / "rebuild" / f"stage{n}"  # the builder of the next stage
        shutil.rmtree(kept, ignore_errors=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work.out), kept)
        builder_tree = kept / recipe.prefix.lstrip("/")
    if digest == meta["tree_digest"]:
        print(
            f"identical: stage{count} rebuilt in this dyno equals the slug's {recipe.name}, "
            "byte for byte"
        )
        return 0
    print(
        f"DIFFERENT: stage{count} rebuilt in this dyno has tree digest {digest[:16]}, the "
        f"slug's {meta['tree_digest'][:16]}"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
