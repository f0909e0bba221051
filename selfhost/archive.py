"""Safe tar extraction: the one way selfhost unpacks an archive it did not write itself.

Slugs uploaded by tenants, source tarballs from mirrors, apps fetched from URLs, stage
trees fetched by workers: every one of them goes through :func:`extract` (or
:func:`check`, the same walk without writing). Nothing here depends on tarfile's
extraction filters, which Debian 12's Python (3.11.2) lacks, so the result is the same
on every Python 3.11 and later.

What is refused (the error names the entry):

- absolute names, ``..`` components, empty names;
- device files, FIFOs and any other special entry;
- an entry whose parent path leads, through any chain of symbolic links, outside the
  confinement (the archive's root, or its ``subtree`` such as ``app``);
- a symbolic link whose target resolves outside the confinement, checked again on the
  final tree, so that a later link cannot turn an earlier one into an escape;
- a hard link to anything but a regular file already unpacked inside;
- more members, or more bytes of file contents, than the limits allow (checked from
  the headers before anything is written: a gzip bomb is refused early).

How it writes: links are resolved by a model of the tree kept in memory (as the kernel
would resolve them), every write goes to a path without links in it, files are
created with ``O_NOFOLLOW | O_EXCL``, setuid/setgid/sticky bits and group/other write
bits are cleared (other mode bits are kept), and owners are never taken from the
archive. Extraction goes to a
staging directory that is renamed into place only when the whole archive passed, so an
archive refused half way leaves nothing behind.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

CHUNK = 1 << 20
MAX_LINK_DEPTH = 40  # the kernel's own limit on nested symlinks (ELOOP)


class ArchiveError(ValueError):
    """An archive was refused; the message names the entry and the reason."""


class AbsoluteLinks(StrEnum):
    """What an absolute symlink target means."""

    REFUSE = "refuse"  # source trees: nothing absolute may be referred to
    ROOTED = "rooted"  # slugs: /app/x inside a dyno is <root>/app/x


@dataclass(frozen=True)
class Limits:
    """Bounds on what one archive may unpack to."""

    max_bytes: int = 4 << 30  # total size of regular files
    max_members: int = 1_000_000


@dataclass
class Stats:
    """What an archive held (of the entries inside the confinement)."""

    members: int = 0
    files: int = 0
    bytes: int = 0


class _Tree:
    """The unpacked tree as the kernel would see it: kinds and link targets by path."""

    def __init__(self, confine: str, absolute: AbsoluteLinks):
        self.confine = confine  # "" (the whole root) or a top directory such as "app"
        self.absolute = absolute
        self.kinds: dict[str, str] = {}  # canonical path -> "dir" | "file" | "link"
        self.links: dict[str, str] = {}  # canonical path -> target as stored

    @property
    def where(self) -> str:
        """The confinement, for messages."""
        return f"/{self.confine}" if self.confine else "the archive"

    def inside(self, parts: list[str]) -> bool:
        if not self.confine:
            return True
        return bool(parts) and parts[0] == self.confine

    def resolve(self, parts: list[str], depth: int = 0) -> list[str] | None:
        """Canonical components of ``parts`` (every link followed), or None if the walk
        leaves the root at any point or loops."""
        if depth > MAX_LINK_DEPTH:
            return None
        current: list[str] = []
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    return None
                current.pop()
                continue
            candidate = [*current, part]
            key = "/".join(candidate)
            if self.kinds.get(key) == "link":
                target = self.links[key]
                if target.startswith("/"):
                    if self.absolute is AbsoluteLinks.REFUSE:
                        return None
                    base: list[str] = []
                else:
                    base = current
                resolved = self.resolve([*base, *target.split("/")], depth + 1)
                if resolved is None:
                    return None
                current = resolved
            else:
                current = candidate
        return current

    def link_escapes(self, path: str) -> bool:
        """Does the link at canonical ``path`` resolve outside the confinement?"""
        target = self.links[path]
        parent = path.split("/")[:-1]
        if target.startswith("/"):
            if self.absolute is AbsoluteLinks.REFUSE:
                return True
            start: list[str] = []
        else:
            start = parent
        resolved = self.resolve([*start, *target.split("/")])
        return resolved is None or not self.inside(resolved)

    def forget(self, path: str) -> None:
        """Drop ``path`` and everything under it from the model."""
        prefix = path + "/"
        for key in [k for k in self.kinds if k == path or k.startswith(prefix)]:
            self.kinds.pop(key, None)
            self.links.pop(key, None)


def _normal(name: str) -> list[str]:
    """The components of an entry name, or ArchiveError for a name that is unsafe."""
    if not name or "\0" in name:
        raise ArchiveError(f"entry {name!r} has an empty or invalid name")
    if name.startswith("/"):
        raise ArchiveError(f"entry {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"entry {name!r} contains '..'")
    return parts


def _file_mode(mode: int) -> int:
    """The archive's mode without setuid, setgid, sticky and group/other write bits
    (the rest is kept as it was: stage trees are verified by digest, modes included)."""
    return mode & 0o755


def _dir_mode(mode: int) -> int:
    return mode & 0o755


def walk(
    fileobj: IO[bytes],
    dest: Path | None,
    *,
    subtree: str = "",
    limits: Limits = Limits(),
    absolute: AbsoluteLinks = AbsoluteLinks.REFUSE,
    what: str = "archive",
) -> Stats:
    """Check (``dest`` None) or unpack an archive stream into the existing empty ``dest``.

    Entries outside ``subtree`` (when given) are skipped, as Heroku skips what is not
    under ``./app`` in a slug. Raises :class:`ArchiveError` on the first refusal; the
    caller deletes ``dest`` then (see :func:`extract`).
    """
    tree = _Tree(subtree, absolute)
    stats = Stats()
    dirs: dict[Path, tuple[int, float]] = {}
    seen = 0
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|*")  # noqa: SIM115 (closed below)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(f"the {what} is not a readable tar archive: {exc}") from None
    with tar:
        try:
            for member in tar:
                seen += 1
                if seen > limits.max_members:
                    raise ArchiveError(
                        f"the {what} has more than {limits.max_members} entries (the limit)"
                    )
                parts = _normal(member.name)
                if subtree and (not parts or parts[0] != subtree):
                    continue
                if not parts:  # "./" itself
                    continue
                _one(tar, member, parts, tree, stats, limits, dest, dirs, what)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError) as exc:
            raise ArchiveError(f"the {what} is damaged: {exc}") from None
    for link in sorted(tree.links):
        if tree.link_escapes(link):
            raise ArchiveError(
                f"entry {link!r} is a symlink to {tree.links[link]!r}, which "
                f"resolves outside {tree.where} in the final "
                "tree"
            )
    for directory, (mode, mtime) in dirs.items():  # last: modes may drop write bits
        if not os.path.isdir(directory) or os.path.islink(directory):
            continue  # replaced by a later entry
        os.chmod(directory, mode)
        _touch(directory, mtime)
    return stats


def _one(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    parts: list[str],
    tree: _Tree,
    stats: Stats,
    limits: Limits,
    dest: Path | None,
    dirs: dict[Path, tuple[int, float]],
    what: str,
) -> None:
    name = member.name
    parent = tree.resolve(parts[:-1])
    if parent is None or (parts[:-1] and not tree.inside(parent)):
        raise ArchiveError(f"entry {name!r} goes through a symlink that leads outside {tree.where}")
    for i in range(1, len(parent) + 1):  # archives may leave out directory entries
        prefix = "/".join(parent[:i])
        kind = tree.kinds.get(prefix)
        if kind is None:
            tree.kinds[prefix] = "dir"
            if dest is not None:
                (dest / prefix).mkdir(mode=0o700)
                dirs[dest / prefix] = (0o755, 0.0)
        elif kind != "dir":
            raise ArchiveError(f"entry {name!r} is under {prefix!r}, which is not a directory")
    canonical = "/".join([*parent, parts[-1]])
    if not member.isreg() and not member.isdir() and not member.issym() and not member.islnk():
        kind = (
            "a device file"
            if member.isdev()
            else "a FIFO"
            if member.isfifo()
            else f"a special entry (type {member.type!r})"
        )
        raise ArchiveError(f"entry {name!r} is {kind}")
    stats.members += 1
    if member.isreg():
        stats.files += 1
        stats.bytes += member.size
        if stats.bytes > limits.max_bytes:
            raise ArchiveError(
                f"the {what} unpacks to more than {limits.max_bytes} bytes (the limit)"
            )
    target = dest / canonical if dest is not None else None
    existing = tree.kinds.get(canonical)
    if existing and not (existing == "dir" and member.isdir()):
        tree.forget(canonical)
        if target is not None:
            if existing == "dir":
                shutil.rmtree(target)
            else:
                target.unlink()
    if member.isdir():
        tree.kinds[canonical] = "dir"
        if target is not None:
            if not existing:
                target.mkdir(mode=0o700)
            dirs[target] = (_dir_mode(member.mode), float(member.mtime))
        return
    if member.issym():
        tree.kinds[canonical] = "link"
        tree.links[canonical] = member.linkname
        if tree.link_escapes(canonical):
            raise ArchiveError(
                f"entry {name!r} is a symlink to {member.linkname!r}, outside {tree.where}"
            )
        if target is not None:
            os.symlink(member.linkname, target)
            _touch(target, member.mtime)
        return
    if member.islnk():
        try:
            linked = tree.resolve(_normal(member.linkname))
        except ArchiveError:
            linked = None
        source = "/".join(linked) if linked is not None else None
        if source is None or not tree.inside(linked or []) or tree.kinds.get(source) != "file":
            raise ArchiveError(
                f"entry {name!r} is a hard link to {member.linkname!r}, which "
                "is not a file unpacked before it inside "
                f"{tree.where}"
            )
        tree.kinds[canonical] = "file"
        if target is not None and dest is not None:
            os.link(dest / source, target, follow_symlinks=False)
        return
    tree.kinds[canonical] = "file"
    if target is None:
        return  # tarfile skips the unread contents by itself in stream mode
    data = tar.extractfile(member)
    assert data is not None
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        remaining = member.size
        while remaining:
            chunk = data.read(min(CHUNK, remaining))
            if not chunk:
                raise ArchiveError(f"entry {name!r} is cut short")
            out.write(chunk)
            remaining -= len(chunk)
        os.fchmod(out.fileno(), _file_mode(member.mode))
    _touch(target, member.mtime)


def _touch(path: Path, mtime: float) -> None:
    """Set a time from the archive (clamped: headers may carry any number)."""
    value = max(0.0, min(float(mtime), 2.0**33))
    os.utime(path, (value, value), follow_symlinks=False)


def check(path: Path, **options: object) -> Stats:
    """Validate an archive file without writing anything (see :func:`walk`)."""
    with open(path, "rb") as f:
        return walk(f, None, **options)  # type: ignore[arg-type]


def extract(path: Path, dest: Path, **options: object) -> Stats:
    """Unpack an archive file into ``dest`` (which must not exist), atomically: it is
    unpacked into a sibling staging directory that is renamed to ``dest`` on success
    and removed on any failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with open(path, "rb") as f:
            stats = walk(f, staging, **options)  # type: ignore[arg-type]
        os.chmod(staging, 0o755)
        os.rename(staging, dest)
    except BaseException:
        _remove(staging)
        raise
    return stats


def _remove(path: Path) -> None:
    """Delete a staging tree (directories stay 0700 until an archive has passed)."""
    shutil.rmtree(path, ignore_errors=True)
