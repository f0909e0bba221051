"""Where an unprivileged bubblewrap finds what it binds: per-sandbox staging mounts.

bubblewrap runs as the sandbox's unprivileged host id, and resolves every mount source
with that id's permissions: a stack, a workspace or the platform's private directory
under a ``0700`` directory (a pytest temporary directory, ``/root``...) would be out of
its reach. So root first binds each source at ``/run/selfhost-sandboxes/<pid>-<n>/<k>``,
in a directory that only the sandbox's host id may enter (``0700``, owned by it), and
bubblewrap binds from there; the staging mounts go when the sandbox ends. Nothing
becomes reachable to anyone else: the staging directory is the host id's own, and
``/run/selfhost-sandboxes`` (a private tmpfs, ``0711``) cannot be listed.

Staging directories of processes that died (kill -9) are unmounted and removed the
next time a sandbox is staged.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

from selfhost.errors import EngineError
from selfhost.syscalls import MNT_DETACH, MS_BIND, MS_PRIVATE, MS_REC, check, libc

ROOT = Path("/run/selfhost-sandboxes")
_counter = itertools.count(1)
_lock = threading.Lock()
_ready = False


def _mount(
    source: str | None, target: Path, fstype: str | None, flags: int, data: str | None = None
) -> None:
    check(
        libc.mount(
            None if source is None else source.encode(),
            str(target).encode(),
            None if fstype is None else fstype.encode(),
            flags,
            None if data is None else data.encode(),
        ),
        str(target),
    )


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _prepare() -> None:
    """``/run/selfhost-sandboxes``: a private tmpfs (mounts made there do not propagate
    to other mount namespaces), and no staging left by dead processes."""
    global _ready
    with _lock:
        if _ready:
            return
        ROOT.mkdir(parents=True, exist_ok=True)
        if not _mounted(ROOT):
            _mount("selfhost-sandboxes", ROOT, "tmpfs", 0, "mode=0711,size=1m")
            _mount(None, ROOT, None, MS_PRIVATE)
        clean_stale()
        _ready = True


def clean_stale(keep: frozenset[str] = frozenset()) -> None:
    """Unmount and remove the staging of processes that died (a daemon killed -9),
    except the directories in ``keep`` (those of the dynos a new daemon adopts)."""
    if not ROOT.is_dir():
        return
    for entry in ROOT.iterdir():
        pid = entry.name.partition("-")[0]
        if str(entry) in keep:
            continue
        if pid.isdigit() and not _alive(int(pid)):
            _remove(entry)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed daemon whose parent has not
    reaped it yet is dead for our purpose)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def _remove(directory: Path) -> None:
    for child in sorted(directory.iterdir(), reverse=True) if directory.is_dir() else []:
        with contextlib.suppress(OSError):
            libc.umount2(str(child).encode(), MNT_DETACH)
    shutil.rmtree(directory, ignore_errors=True)


class Staging:
    """The staged sources of one sandbox."""

    def __init__(self, directory: Path, paths: dict[Path, Path]):
        self.directory = directory
        self.paths = paths

    @classmethod
    def create(cls, sources: Iterable[Path], host_id: int) -> Staging:
        """Bind each source (a directory) where ``host_id`` can reach it."""
        _prepare()
        directory = ROOT / f"{os.getpid()}-{next(_counter)}"
        directory.mkdir(mode=0o700)
        staging = cls(directory, {})
        try:
            for k, source in enumerate(dict.fromkeys(sources)):
                target = directory / str(k)
                target.mkdir()
                _mount(str(source), target, None, MS_BIND | MS_REC)
                staging.paths[source] = target
            os.chown(directory, host_id, host_id)
        except OSError as exc:
            staging.remove()
            raise EngineError(
                f"cannot stage {exc.filename or 'a mount'} for the sandbox: {exc.strerror}",
                hint="sandboxes drop root, so root stages what they bind; "
                "this needs root and mount support",
            ) from None
        return staging

    def __getitem__(self, source: Path) -> Path:
        return self.paths[source]

    def remove(self) -> None:
        _remove(self.directory)
