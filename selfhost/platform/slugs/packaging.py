"""Package a compiler's proven final stage, with an app, into a slug.

A compiler bakes its install prefix into itself (tcc looks for ``$PREFIX/lib/tcc``), so
recipes build every stage at the prefix a slug puts it at: ``/app/vendor/<name>`` by
default. The slug ships the final stage's tree *as it was built and tested*: ``invoke
slug`` runs the bootstrap (every stage a verified cache hit after ``invoke bootstrap``,
nothing rebuilt) and packs that tree, whose digest the slug records.

Slug layout (under ``./app``)::

    Procfile, ...             the app: the user's (--app-dir: its Procfile with web:,
                              worker:..., its .slugignore and .profile.d), or the
                              platform's own compile-worker app (the default)
    .profile.d/000-selfhost.sh  PATH, LD_LIBRARY_PATH (the recipe's library_path) relative
                              to /app, SELFHOST_COMPILER, SELFHOST_PREFIX, SELFHOST_CC,
                              PYTHONPATH (for selfhost_fork)
    vendor/selfhost/bin/fork  cloud processes: fork child dynos, read their output
    vendor/selfhost/python/selfhost_fork.py    (selfhost/platform/fork.py, stdlib only)
    vendor/<name>/...         the final stage's install tree, byte for byte
    selfhost.json             what was packed: recipe, stage, input hash, tree digest,
                              fixpoint, sources, the build stack and the run stack

and, for the platform's worker app (compiler slugs that rebuild themselves)::

    vendor/src/<group>/       the pinned sources (unless the recipe says [slug] source =
                              false), as every builder sees them
    vendor/recipes/<name>.toml  the recipe
    bin/rebuild               rebuild the compiler in a dyno, stage by stage, with the one
                              stage builder, and compare the last stage with vendor/<name>
    vendor/python/...         selfhost, huey, redis, requests (pure Python), for bin/worker
                              and bin/rebuild on the stack's own Python
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfhost.compilers.recipe import Recipe
from selfhost.config import Settings
from selfhost.errors import SlugError
from selfhost.platform.slugs.lint import Lint, lint_slug
from selfhost.platform.slugs.slug import (
    SlugContents,
    SlugInfo,
    pack,
    parse_procfile,
    read_slugignore,
)
from selfhost.stages.engine import Engine
from selfhost.stages.pipeline import Bootstrap, BootstrapResult, ensure_stack, require_fixpoint
from selfhost.stages.stack import Stack
from selfhost.ui import UI

APP_TEMPLATE = Path(__file__).parents[1] / "app"  # selfhost/platform/app
PROFILE = ".profile.d/000-selfhost.sh"
#: The worker's Python packages, copied from this installation (pure Python only: the
#: stack's interpreter runs them; compiled speed-ups have pure fallbacks).
WORKER_PACKAGES = (
    "selfhost",
    "huey",
    "redis",
    "async_timeout",
    "requests",
    "urllib3",
    "idna",
    "charset_normalizer",
    "certifi",
)
WORKER_IGNORE = ("__pycache__", "*.pyc", "*.so", "tests", "djhuey", "flask_admin", "cli")
REBUILD = """\
#!/bin/sh
# Rebuild this slug's compiler in this dyno with selfhost's one stage builder:
#   bin/rebuild [STAGES] [--no-test]
# stage1 is built by the slug's own compiler, each next stage by the previous one, at
# the same prefix; the last is compared with the slug's, byte for byte (exit 1 if not).
export PYTHONPATH="/app/vendor/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
exec python3 -m selfhost.stages.rebuild "$@"
"""


FORK = """\
#!/bin/sh
# Fork child dynos of this release: fork run -- CMD [ARG...] (see fork --help)
exec python3 /app/vendor/selfhost/python/selfhost_fork.py "$@"
"""


def add_fork_client(contents: SlugContents) -> None:
    """``bin/fork`` and its Python module, in every slug (:mod:`selfhost.platform.fork`)."""
    from selfhost.platform import fork

    contents.add_file("vendor/selfhost/python/selfhost_fork.py", source=Path(fork.__file__))
    contents.add_file("vendor/selfhost/bin/fork", data=FORK.encode(), executable=True)


def add_worker_packages(contents: SlugContents) -> None:
    """Vendor the compile worker's packages at ``vendor/python``."""
    import importlib.util

    for name in WORKER_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SlugError(
                f"the compile worker needs the Python package {name!r}, which "
                "is not installed here",
                hint="run ./setup (pip install -e .)",
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        ignore = WORKER_IGNORE if name != "selfhost" else ("__pycache__", "*.pyc")
        contents.add_tree(root, under=f"vendor/python/{name}", ignore=ignore)


def profile_script(recipe: Recipe) -> bytes:
    """``.profile.d/000-selfhost.sh``: the runtime's environment in every dyno."""
    prefix = recipe.prefix
    libs = ":".join(f"{prefix}/{d.strip('/')}" for d in recipe.library_path or ("lib",))
    return (
        "# Generated by selfhost: the runtime in this slug, with paths relative to /app.\n"
        f"export SELFHOST_COMPILER={recipe.name}\n"
        f"export SELFHOST_PREFIX={prefix}\n"
        f"export SELFHOST_CC={recipe.compiler_command}\n"
        f'export PATH="{prefix}/bin:/app/bin:/app/vendor/selfhost/bin:$PATH"\n'
        'export PYTHONPATH="/app/vendor/selfhost/python${PYTHONPATH:+:$PYTHONPATH}"\n'
        f'export LD_LIBRARY_PATH="{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
    ).encode()


@dataclass
class CompilerSlug:
    """A packed slug and what went into it."""

    info: SlugInfo
    bootstrap: BootstrapResult
    lints: list[Lint]
    target_stack: Stack

    def to_json(self) -> dict[str, Any]:
        out = self.info.to_json()
        out["warnings"] = [*out["warnings"], *(str(x) for x in self.lints)]
        out["lints"] = [{"kind": x.kind, "path": x.path, "message": x.message} for x in self.lints]
        out["stack"] = self.target_stack.spec.name
        out["compiler"] = self.bootstrap.recipe.name
        out["stage"] = self.bootstrap.stages[-1].stage
        out["fixpoint"] = self.bootstrap.fixpoint
        out["tree_digest"] = self.bootstrap.stages[-1].manifest.tree_digest
        out["input_hash"] = self.bootstrap.stages[-1].input_hash
        # which stages the slug's bootstrap took from the cache (after `invoke
        # bootstrap`: all of them, nothing rebuilt)
        out["stages"] = [
            {"stage": s.stage, "input_hash": s.input_hash, "cached": s.cached}
            for s in self.bootstrap.stages
        ]
        return out


def assemble(
    recipe: Recipe,
    final_tree: Path,
    metadata: dict[str, Any],
    *,
    sources: dict[str, Path] | None = None,
    app_dir: Path | None = None,
) -> tuple[SlugContents, dict[str, str]]:
    """The slug's contents: the app, the profile script and the final stage; for the
    platform's worker app also the sources, the recipe, ``bin/rebuild`` and the worker's
    Python packages."""
    platform_app = app_dir is None
    app = APP_TEMPLATE if app_dir is None else app_dir
    procfile = app / "Procfile"
    if not procfile.is_file():
        raise SlugError(
            f"{app} has no Procfile",
            hint="a Procfile says what the app runs, one process type per line, "
            "e.g. 'web: gosh index.scm'",
        )
    process_types = parse_procfile(procfile.read_text(), str(procfile))
    vendored = recipe.prefix.removeprefix("/app/")
    contents = SlugContents()
    contents.add_tree(app, ignore=[*read_slugignore(app), ".slugignore"])
    for shipped in (vendored, "vendor/selfhost"):
        if any(p == shipped or p.startswith(f"{shipped}/") for p in contents.entries):
            raise SlugError(
                f"the app has its own {shipped}: it would hide what selfhost ships there",
                hint=f"remove {app / shipped}, or list it in .slugignore",
            )
    contents.add_file(PROFILE, data=profile_script(recipe))
    add_fork_client(contents)
    contents.add_tree(final_tree, under=vendored)
    contents.add_file(
        "selfhost.json", data=(json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode()
    )
    if platform_app:
        if recipe.path is not None:
            contents.add_file(f"vendor/recipes/{recipe.name}.toml", source=recipe.path)
        add_worker_packages(contents)
        if recipe.slug_source and sources:
            for group, tree in sources.items():
                contents.add_tree(tree, under=f"vendor/src/{group}")
            contents.add_file("bin/rebuild", data=REBUILD.encode(), executable=True)
    return contents, process_types


def build_slug(
    settings: Settings,
    recipe: Recipe,
    engine: Engine,
    ui: UI,
    *,
    app_dir: Path | None = None,
    out: Path | None = None,
    strict: bool = False,
    target_suite: str | None = None,
    force: bool = False,
) -> CompilerSlug:
    """The proven final stage of ``recipe`` (bootstrapped if it is not cached yet), with
    an app (the user's, or the platform's worker app), linted and packed reproducibly."""
    if not recipe.prefix.startswith("/app/"):
        raise SlugError(
            f"{recipe.name}'s prefix is {recipe.prefix}: a slug ships the stage as it was built, "
            "so the prefix must be under /app",
            hint="leave prefix out of the recipe (the default is /app/vendor/NAME)",
        )
    if app_dir is not None and not app_dir.is_dir():
        raise SlugError(f"the app directory {app_dir} does not exist")
    outcome = Bootstrap(settings, engine, ui).run(recipe, force=force)
    require_fixpoint(outcome)
    final = outcome.stages[-1]
    final_tree = final.entry / "tree" / recipe.prefix.lstrip("/")
    # the platform's workers build stage 1 with stage0: their dynos need the build stack;
    # a user's app runs on the run stack (stage0's packages left out)
    runs_on = outcome.stack
    if app_dir is not None and set(recipe.stage0_packages) - set(recipe.stack_packages):
        with ui.step("run stack") as step:
            runs_on = ensure_stack(settings, recipe, ui.info, run=True)
            step.note = runs_on.spec.name
    target = runs_on
    if target_suite and target_suite != (recipe.suite or settings.suite):
        with ui.step(f"target stack {target_suite}") as step:
            target = ensure_stack(
                settings.with_overrides(suite=target_suite),
                recipe,
                ui.info,
                run=app_dir is not None,
            )
            step.note = target.spec.name
    metadata = {
        "compiler": recipe.name,
        "version": recipe.version,
        "prefix": recipe.prefix,
        "compiler_command": recipe.compiler_command,
        "stage": final.stage,
        "input_hash": final.input_hash,
        "tree_digest": final.manifest.tree_digest,
        "fixpoint": outcome.fixpoint,
        "source": outcome.source.digest,
        "sources": outcome.source.digests,
        "patches": list(outcome.source.patches),
        "built_on": outcome.stack.identity,
        "runs_on": runs_on.identity,
        "app": "platform" if app_dir is None else "user",
    }
    with ui.step("slug") as step:
        contents, process_types = assemble(
            recipe, final_tree, metadata, sources=outcome.source.trees, app_dir=app_dir
        )
        build_paths = [str(settings.workspace), "/build/src"]
        # The lints read the tree while it is packed (gzip has a core of its own); the
        # slug appears only once they have passed (--strict).
        with ThreadPoolExecutor(1, thread_name_prefix="lint") as pool:
            # The shipped source is built, not run; the vendored Python is the worker's.
            linting = pool.submit(
                lint_slug,
                contents,
                target.rootfs,
                build_paths,
                skip=("vendor/src/", "vendor/python/"),
                path=[f"{recipe.prefix}/bin"],
            )
            lints: list[Lint] = []

            def lints_pass() -> None:
                lints.extend(linting.result())
                for lint in lints:
                    ui.warn(str(lint))
                if strict and lints:
                    raise SlugError(
                        f"{len(lints)} lint(s) failed in --strict mode; the slug was not written",
                        details="\n".join(f"  {x}" for x in lints),
                        hint="fix them, or build without --strict to get warnings only",
                    )

            name = recipe.name if app_dir is None else f"{app_dir.resolve().name}-{recipe.name}"
            target_path = out or settings.workspace / "slugs" / f"{name}-{recipe.version}.tgz"
            info = pack(
                contents,
                target_path,
                mtime=recipe.source_date_epoch,
                process_types=process_types,
                max_bytes=settings.slug_max_bytes,
                before_publish=lints_pass,
            )
        for warning in info.warnings:
            ui.warn(warning)
        step.note = f"{info.size} bytes"
    return CompilerSlug(info, outcome, lints, target)
