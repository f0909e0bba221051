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

Every cached tree is verified against its manifest's tree digest before it is used.
Hashing a Gauche stage (124 MB) on every lookup would cost seconds, so a full
verification leaves a *stamp* (``verified.json``): the digest of every entry's lstat
(path, mode, inode, size, mtime and ctime in nanoseconds). While the stamp matches, the
tree is what was verified; any write, chmod, chown, rename or new file changes a ctime
that only the kernel sets, and the next lookup hashes the tree again. Entries changed
within ``RACY_NS`` of the stamp's own time are hashed again too (the kernel's clock
ticks in milliseconds; this is git's "racy" rule).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from selfhost.errors import CacheError
from selfhost.hashing import SpecialFile, digest_json, scan_tree, tree_digest, walk_tree
from selfhost.stages.manifest import Manifest, write_json_atomic

STAMP = "verified.json"
RACY_NS = 100_000_000  # 0.1 s


def stat_signature(tree: Path) -> tuple[str, int]:
    """The digest of every entry's lstat under ``tree`` and the newest ctime."""
    h = hashlib.sha256()
    newest = 0
    for rel, st, _ in walk_tree(tree):
        h.update(
            f"{rel}\0{st.st_mode}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0"
            f"{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode()
        )
        newest = max(newest, st.st_ctime_ns)
    return h.hexdigest(), newest


def stamp(entry: Path, digest: str) -> None:
    """Record that ``entry``'s tree was verified to have ``digest`` (best effort: a
    read-only workspace only loses the shortcut)."""
    with contextlib.suppress(OSError, SpecialFile):
        written = time.time_ns()
        signature, _ = stat_signature(entry / "tree")
        write_json_atomic(
            entry / STAMP, {"tree_digest": digest, "signature": signature, "written_ns": written}
        )


def _stamp_holds(entry: Path, digest: str) -> bool:
    try:
        recorded = json.loads((entry / STAMP).read_text())
        if recorded.get("tree_digest") != digest:
            return False
        signature, newest = stat_signature(entry / "tree")
    except (OSError, ValueError, AttributeError, SpecialFile):
        return False
    racy = newest >= int(recorded.get("written_ns", 0)) - RACY_NS
    return signature == recorded.get("signature") and not racy


def verify(entry: Path, manifest: Manifest) -> None:
    """Raise CacheError unless the stage tree at ``entry`` has its recorded digest."""
    if _stamp_holds(entry, manifest.tree_digest):
        return
    try:
        files = scan_tree(entry / "tree")
        actual = tree_digest(files)
    except (OSError, SpecialFile) as exc:
        files, actual = [], f"unreadable ({exc})"
    if actual == manifest.tree_digest:
        stamp(entry, actual)
        return
    recorded = {e.path: e.to_json() for e in manifest.files}
    now = {e.path: e.to_json() for e in files}
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
        stamp(target, manifest.tree_digest)  # the digest was just computed from this tree
        return target
