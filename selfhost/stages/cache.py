"""The content-addressed stage cache.

A stage's *input hash* (:meth:`selfhost.stages.builder.StageSpec.key`) is the sha256 of
the canonical JSON of everything that can change its bytes: the recipe's build inputs,
the sources' tree digests, the stack identity, the builder (stage0, or the previous
stage's output tree digest) and the environment. A complete stage lives at
``cache/stages/<input_hash>/``; it is built in ``tmp/<input_hash>/`` and moved there
by a single ``rename`` once its manifest is written, so a stage interrupted at any
moment is never found complete.

Because the builder is identified by its *output* digest, a fixpoint shows up in the
cache itself: once stage N+1 equals stage N, stage N+2 has stage N+1's input hash.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from selfhost.errors import CacheError
from selfhost.hashing import SpecialFile, digest_json, scan_tree, tree_digest
from selfhost.stages.manifest import Manifest, write_json_atomic


def verify(entry: Path, manifest: Manifest) -> None:
    """Raise CacheError unless the stage tree at ``entry`` has its recorded digest."""
    try:
        actual = tree_digest(scan_tree(entry / "tree"))
    except (OSError, SpecialFile) as exc:
        actual = f"unreadable ({exc})"
    if actual == manifest.tree_digest:
        return
    recorded = {e.path: e.to_json() for e in manifest.files}
    try:
        now = {e.path: e.to_json() for e in scan_tree(entry / "tree")}
    except (OSError, SpecialFile):
        now = {}
    changed = sorted(p for p in set(recorded) | set(now) if recorded.get(p) != now.get(p))
    raise CacheError(
        f"the cached stage {manifest.stage} of {manifest.compiler} ({entry.name[:16]}) was "
        "modified after it was recorded; it was not used",
        details=f"  recorded tree digest: {manifest.tree_digest}\n  actual:               "
        f"{actual}\n" + "\n".join(f"  changed: {p}" for p in changed[:20]),
        hint=f"something wrote into {entry}; remove that entry (it is rebuilt on the next "
        "run) and find out what changed it",
    )


class StageCache:
    """Complete stages under ``cache/stages`` and work in progress under ``tmp``."""

    def __init__(self, root: Path, tmp: Path):
        self.root = root
        self.tmp = tmp

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Manifest | None:
        """The manifest of a complete stage, or None (a missing or unreadable manifest).

        The stage's tree is verified first: a tree whose digest is not its manifest's
        was changed after it was recorded, and is refused (CacheError), never used.
        """
        path = self.entry(key) / "manifest.json"
        try:
            manifest = Manifest.load(path)
        except (OSError, ValueError, KeyError):
            return None
        verify(self.entry(key), manifest)
        return manifest

    def test_result(self, entry: Path, command: str) -> dict[str, Any] | None:
        """The recorded result of ``command`` on a stage: its manifest's own (the tests
        it was built with), else one run later (``tests.json``), else None."""
        manifest = Manifest.load(entry / "manifest.json")
        if manifest.tests is not None and manifest.tests.command.strip() == command:
            return manifest.tests.to_json()
        try:
            runs = json.loads((entry / "tests.json").read_text())
        except (OSError, ValueError):
            return None
        found = runs.get(digest_json(command))
        return found if isinstance(found, dict) else None

    def record_test(self, entry: Path, result: dict[str, Any]) -> None:
        """Record a later test run of a stage (the stage itself is unchanged)."""
        path = entry / "tests.json"
        try:
            runs = json.loads(path.read_text())
        except (OSError, ValueError):
            runs = {}
        runs[digest_json(str(result["command"]).strip())] = result
        write_json_atomic(path, runs)

    def begin(self, key: str) -> Path:
        """A fresh work directory for building ``key`` (any earlier attempt is wiped)."""
        work = self.tmp / key
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        return work

    def commit(self, key: str, work: Path, manifest: Manifest) -> Path:
        """Publish a finished work directory as the cache entry ``key``.

        The manifest is written last, then the directory is renamed into place: the
        entry appears complete, or not at all.
        """
        manifest.write(work / "manifest.json")
        target = self.entry(key)
        self.root.mkdir(parents=True, exist_ok=True)
        if target.exists():  # only reachable with --force: replace the old entry
            trash = self.tmp / f"{key}.old-{os.getpid()}"
            os.rename(target, trash)
            os.rename(work, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(work, target)
        return target
