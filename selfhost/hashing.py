"""Hashing helpers: file digests, canonical JSON digests and tree scans.

Every content address in selfhost is a sha256 over either raw bytes or the
*canonical JSON* of a value (sorted keys, no whitespace, UTF-8), so that the same
inputs always give the same digest whatever the dict order or Python version.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Serialise a JSON value canonically: sorted keys, compact, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_json(value: Any) -> str:
    """Return the hex sha256 of a value's canonical JSON."""
    return sha256_bytes(canonical_json(value))


class SpecialFile(ValueError):
    """A tree holds a device file, socket or FIFO, which no build output may hold."""

    def __init__(self, path: Path, relative: str, kind: str):
        super().__init__(f"{path}: {kind} in a build output")
        self.path = path
        self.relative = relative
        self.kind = kind


def special_kind(mode: int) -> str:
    """A readable name for a file type that is not a file, link or directory."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return f"a special file (mode {mode:o})"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One entry of a scanned tree: a regular file, a symlink or a directory."""

    path: str  # relative, POSIX separators
    kind: str  # "file" | "symlink" | "dir"
    mode: int  # permission bits only (0o7777)
    size: int = 0
    sha256: str | None = None  # files only
    target: str | None = None  # symlinks only

    def to_json(self) -> dict[str, Any]:
        """The manifest form of this entry (see docs/state.md)."""
        out: dict[str, Any] = {"type": self.kind, "mode": f"{self.mode:04o}"}
        if self.kind == "file":
            out["size"] = self.size
            out["sha256"] = self.sha256
        elif self.kind == "symlink":
            out["target"] = self.target
        return out

    @classmethod
    def from_json(cls, path: str, data: dict[str, Any]) -> FileEntry:
        """Inverse of :meth:`to_json`."""
        return cls(
            path=path,
            kind=data["type"],
            mode=int(data["mode"], 8),
            size=int(data.get("size", 0)),
            sha256=data.get("sha256"),
            target=data.get("target"),
        )


def walk_tree(root: Path) -> Iterator[tuple[str, os.stat_result, Path]]:
    """Yield ``(relative path, lstat, absolute path)`` for everything under root, sorted."""
    stack = [root]
    found: list[tuple[str, os.stat_result, Path]] = []
    while stack:
        current = stack.pop()
        with os.scandir(current) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                abs_path = Path(entry.path)
                found.append((abs_path.relative_to(root).as_posix(), st, abs_path))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(abs_path)
    found.sort(key=lambda item: item[0])
    yield from found


def scan_tree(root: Path) -> list[FileEntry]:
    """Describe every file, symlink and directory under ``root``, sorted by path.

    Device files, sockets and FIFOs are refused (:class:`SpecialFile`): a build output
    must not contain them, and they cannot be reproduced byte for byte.
    """
    entries: list[FileEntry] = []
    for rel, st, abs_path in walk_tree(root):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            entries.append(FileEntry(rel, "file", mode, st.st_size, sha256_file(abs_path)))
        elif stat.S_ISLNK(st.st_mode):
            entries.append(FileEntry(rel, "symlink", mode, target=os.readlink(abs_path)))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(FileEntry(rel, "dir", mode))
        else:
            raise SpecialFile(abs_path, rel, special_kind(st.st_mode))
    return entries


def tree_digest(entries: list[FileEntry]) -> str:
    """Digest a scanned tree: paths, kinds, modes, contents and link targets."""
    return digest_json([[e.path, e.to_json()] for e in entries])
