"""The workspace: every path selfhost writes, and the lock that serialises runs.

Layout (documented for users in ``docs/state.md``)::

    <workspace>/                    selfhost.workspace, default ./.selfhost
      lock                          flock'ed by the run that owns the workspace
      sources/                      downloads and pristine source trees (compilers.sources)
      stacks/                       debootstrapped stacks, unless selfhost.stacks_dir is set
      cache/stages/<input_hash>/    complete stages: manifest.json, tree/, logs/
      tmp/<input_hash>/             stages being built, or failed (kept for reproduction)
      stages/<compiler>/stageN      symlinks to the cache entries of the last bootstrap
      stages/<compiler>/run.json    the last bootstrap's result (what --json prints)

A stage is complete if and only if ``cache/stages/<input_hash>/manifest.json`` exists.
Entries get there by one ``rename`` of a finished directory, so an interrupted build
(Ctrl-C, kill -9) can never look complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from selfhost.errors import LockError, UsageError


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace; creating the object touches nothing on disk."""

    root: Path

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    @property
    def stage_cache(self) -> Path:
        return self.root / "cache" / "stages"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def stages_of(self, compiler: str) -> Path:
        """Where the last bootstrap of ``compiler`` links its stages."""
        return self.root / "stages" / compiler

    @contextmanager
    def locked(
        self, wait: float = 0, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        """Hold the workspace lock for the block; wait up to ``wait`` seconds for it."""
        with file_lock(
            self.root / "lock",
            wait=wait,
            on_wait=on_wait,
            what=f"workspace {self.root}",
            setting="selfhost.workspace",
        ):
            yield


@contextmanager
def file_lock(
    path: Path,
    *,
    wait: float = 0,
    what: str,
    on_wait: Callable[[str], None] | None = None,
    setting: str | None = None,
) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; the holder's pid and command are written in it.

    The kernel releases the lock when the holder dies, even by SIGKILL, so a stale lock
    file never blocks anybody. A directory that cannot be written is a UsageError that
    names ``setting`` (the configuration key that chose it).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise unwritable(exc, path, setting) from None
    try:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"{what} is in use by {holder}",
                        hint="wait for that run to finish, or set selfhost.lock_wait (seconds) "
                        "to wait for it, or use another workspace (selfhost.workspace)",
                    ) from None
                if on_wait and not told:
                    on_wait(f"waiting up to {wait:.0f}s for {what}, in use by {holder}")
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "command": " ".join(sys.argv), "since": time.time()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def unwritable(exc: OSError, path: Path, setting: str | None) -> UsageError:
    """The error for a state directory that cannot be written, naming its setting."""
    env = f"INVOKE_{setting.replace('.', '_').upper()}" if setting else ""
    return UsageError(
        f"cannot write {exc.filename or path}: {exc.strerror}",
        hint=f"{setting} must name a writable directory: set it in invoke.yaml or with "
        f"{env}=/some/writable/dir"
        if setting
        else "the directory must be writable",
    )


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        since = time.strftime("%H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} ({info['command']}, since {since})"
    except (OSError, ValueError, KeyError):
        return "another process"
