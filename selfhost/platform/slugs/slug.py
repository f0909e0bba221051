"""Slugs: byte-reproducible Heroku-format archives of an app.

A slug is a gzip-compressed tar whose every entry lives under ``./app`` (Heroku ignores
anything else). selfhost's slugs are reproducible: the same inputs give the same
sha256 whatever the workspace path, the clock or the umask, because

- entries are sorted by path, and directories come before their contents;
- every mtime is ``SOURCE_DATE_EPOCH``;
- owners are uid/gid 0 with empty user and group names;
- modes are normalised: directories and executables 0755, other files 0644,
  symlinks 0777;
- the gzip header carries no file name and a zero timestamp;
- ``.git`` directories are never included and ``.slugignore`` is honoured.

Hard links are stored as regular files; device files, sockets and FIFOs are refused.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import queue
import re
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfhost import archive
from selfhost.archive import AbsoluteLinks, ArchiveError, Limits, Stats
from selfhost.errors import SlugError

PROCESS_TYPE_RE = re.compile(r"^[-\w]{1,128}$")
WARN_BYTES = 300 * 1000 * 1000
DEFAULT_MAX_BYTES = 500 * 1000 * 1000
GZIP_LEVEL = 6


# --------------------------------------------------------------------------- Procfile


def parse_procfile(text: str, origin: str = "Procfile") -> dict[str, str]:
    """Parse a Procfile strictly: ``name: command`` per line.

    Blank lines and ``#`` comments are skipped; the line is split on the first ``:``;
    names must match ``^[-\\w]{1,128}$`` (Heroku's rule); duplicates and empty commands
    are refused with the line number.
    """
    types: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        name, command = name.strip(), command.strip()
        where = f"{origin}:{number}"
        if not sep:
            raise SlugError(
                f"{where}: expected 'name: command', got {line!r}",
                hint="each process type is one line such as 'worker: bin/worker'",
            )
        if not PROCESS_TYPE_RE.match(name):
            raise SlugError(
                f"{where}: process type {name!r} is not valid",
                hint="use 1 to 128 letters, digits, '_' or '-'",
            )
        if not command:
            raise SlugError(f"{where}: process type {name!r} has no command")
        if name in types:
            raise SlugError(f"{where}: process type {name!r} is defined twice")
        types[name] = command
    return types


# --------------------------------------------------------------------------- contents


@dataclass
class SlugEntry:
    """One entry of a slug: its path under ``app/`` and where its bytes come from."""

    path: str  # relative to app/, POSIX, no leading ./
    kind: str  # "dir" | "file" | "symlink"
    source: Path | None = None  # files: the host file
    data: bytes | None = None  # files: literal contents (generated files)
    target: str | None = None  # symlinks
    executable: bool = False


@dataclass
class SlugContents:
    """The entries of a slug, keyed by path, built up from directories and files."""

    entries: dict[str, SlugEntry] = field(default_factory=dict)

    def add_dir(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            self.entries.setdefault(sub, SlugEntry(sub, "dir"))

    def add_file(
        self,
        path: str,
        *,
        source: Path | None = None,
        data: bytes | None = None,
        executable: bool = False,
    ) -> None:
        self.add_dir(path.rpartition("/")[0])
        self.entries[path] = SlugEntry(
            path, "file", source=source, data=data, executable=executable
        )

    def add_tree(self, root: Path, under: str = "", ignore: Iterable[str] = ()) -> None:
        """Add everything below ``root`` at ``under``; skip ``.git`` and ignored paths."""
        patterns = list(ignore)
        if under:
            self.add_dir(under)
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            keep = []
            for name in sorted(dirnames):
                rel = f"{rel_dir}/{name}".lstrip("/")
                full = Path(dirpath, name)
                if name == ".git" or _ignored(rel, patterns):
                    continue
                if full.is_symlink():  # os.walk lists links to directories as dirs
                    self._add_path(full, _join(under, rel))
                else:
                    keep.append(name)
                    self.add_dir(_join(under, rel))
            dirnames[:] = keep
            for name in sorted(filenames):
                rel = f"{rel_dir}/{name}".lstrip("/")
                if name == ".git" or _ignored(rel, patterns):
                    continue
                self._add_path(Path(dirpath, name), _join(under, rel))

    def _add_path(self, full: Path, path: str) -> None:
        st = full.lstat()
        if stat.S_ISLNK(st.st_mode):
            self.add_dir(path.rpartition("/")[0])
            self.entries[path] = SlugEntry(path, "symlink", target=os.readlink(full))
        elif stat.S_ISREG(st.st_mode):
            self.add_file(path, source=full, executable=bool(st.st_mode & 0o111))
        else:
            raise SlugError(
                f"{full}: special files (devices, sockets, FIFOs) cannot go into a slug",
                hint="remove it, or list it in .slugignore",
            )

    def read(self, entry: SlugEntry) -> bytes:
        if entry.data is not None:
            return entry.data
        assert entry.source is not None
        return entry.source.read_bytes()


def _join(under: str, rel: str) -> str:
    return f"{under}/{rel}" if under else rel


def read_slugignore(app_dir: Path) -> list[str]:
    """Patterns from ``.slugignore`` (one per line, ``#`` comments, blank lines skipped)."""
    path = app_dir / ".slugignore"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Heroku-style .slugignore: a pattern with a '/' matches from the app root,
    one without matches a name at any depth; a directory match excludes its contents."""
    for pattern in patterns:
        anchored = pattern.startswith("/") or "/" in pattern.rstrip("/")
        pat = pattern.strip("/")
        if anchored:
            if fnmatch.fnmatchcase(rel, pat) or rel.startswith(pat + "/"):
                return True
        elif any(fnmatch.fnmatchcase(part, pat) for part in rel.split("/")):
            return True
    return False


# --------------------------------------------------------------------------- packing


@dataclass
class SlugInfo:
    """A packed slug."""

    path: Path
    checksum: str  # "SHA256:<hex>"
    size: int
    process_types: dict[str, str]
    entries: int
    warnings: list[str] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return self.checksum.split(":", 1)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "checksum": self.checksum,
            "size": self.size,
            "process_types": self.process_types,
            "warnings": self.warnings,
        }


def _tarinfo(name: str, kind: bytes, mode: int, mtime: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.size = size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingWriter(io.RawIOBase):
    """A file wrapper that hashes and counts what is written through it."""

    def __init__(self, f: Any):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.f.write(b)
        return len(b)


class _CompressInBackground(io.RawIOBase):
    """Hand tar's output to a thread that gzips it: zlib releases the GIL, so the
    compression runs beside the tar writer (as ``tar | gzip`` does with two processes).
    Chunks of 1 MiB, always the same, so the output is the same bytes every time."""

    CHUNK = 1 << 20

    def __init__(self, gz: gzip.GzipFile):
        self.gz = gz
        self.buffer = bytearray()
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.position = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is None:
                try:
                    self.gz.write(chunk)
                except BaseException as exc:  # handed to the writer on its next call
                    self.error = exc

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.error is not None:
            raise self.error
        self.buffer += b
        self.position += len(b)
        if len(self.buffer) >= self.CHUNK:
            self.queue.put(bytes(self.buffer))
            self.buffer.clear()
        return len(b)

    def tell(self) -> int:  # tarfile asks where it starts
        return self.position

    def finish(self) -> None:
        """Compress what is left and wait for the thread; raise what it raised."""
        if self.buffer:
            self.queue.put(bytes(self.buffer))
            self.buffer.clear()
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        self.error = self.error or RuntimeError("abandoned")
        self.queue.put(None)
        self.thread.join()


def pack(
    contents: SlugContents,
    out: Path,
    *,
    mtime: int,
    process_types: dict[str, str],
    max_bytes: int = DEFAULT_MAX_BYTES,
    before_publish: Callable[[], None] | None = None,
) -> SlugInfo:
    """Write the slug to ``out`` reproducibly; refuse it if it exceeds ``max_bytes``.
    ``before_publish`` runs once the slug is complete and before it appears at ``out``:
    if it raises, nothing is written (lints run beside the packing this way)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingWriter(raw)
            with gzip.GzipFile(
                filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=hashing, mtime=0
            ) as gz:
                background = _CompressInBackground(gz)
                try:
                    _write_tar(contents, background, hashing, mtime, max_bytes)
                except BaseException:
                    background.abandon()
                    raise
                background.finish()
        size = hashing.size
        if size > max_bytes:
            raise _too_big(size, max_bytes)
        if before_publish is not None:
            before_publish()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    warnings = []
    if size > WARN_BYTES:
        warnings.append(
            f"slug size {size / 1e6:.0f} MB is over the {WARN_BYTES // 10**6} MB "
            "soft limit: boot times grow with slug size; consider .slugignore"
        )
    return SlugInfo(
        out,
        f"SHA256:{hashing.sha.hexdigest()}",
        size,
        process_types,
        len(contents.entries) + 1,
        warnings,
    )


def _write_tar(
    contents: SlugContents, out: Any, hashing: _HashingWriter, mtime: int, max_bytes: int
) -> None:
    """The slug's tar stream: ./app first, then every entry in path-component order."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_tarinfo("./app", tarfile.DIRTYPE, 0o755, mtime))
        for path in sorted(contents.entries, key=_sort_key):
            entry = contents.entries[path]
            name = f"./app/{path}"
            if entry.kind == "dir":
                tar.addfile(_tarinfo(name, tarfile.DIRTYPE, 0o755, mtime))
            elif entry.kind == "symlink":
                info = _tarinfo(name, tarfile.SYMTYPE, 0o777, mtime)
                info.linkname = entry.target or ""
                tar.addfile(info)
            else:
                mode = 0o755 if entry.executable else 0o644
                if entry.data is not None:
                    info = _tarinfo(name, tarfile.REGTYPE, mode, mtime, len(entry.data))
                    tar.addfile(info, io.BytesIO(entry.data))
                else:
                    assert entry.source is not None
                    with open(entry.source, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        tar.addfile(_tarinfo(name, tarfile.REGTYPE, mode, mtime, size), f)
                if hashing.size > max_bytes:
                    raise _too_big(hashing.size, max_bytes, partial=True)


def _sort_key(path: str) -> tuple[str, ...]:
    """Sort by path components, so a directory comes right before its contents."""
    return tuple(path.split("/"))


def _too_big(size: int, limit: int, partial: bool = False) -> SlugError:
    over = "more than " if partial else ""
    return SlugError(
        f"the slug is {over}{size / 1e6:.0f} MB, above the hard limit of "
        f"{limit / 1e6:.0f} MB; it was not written",
        hint="exclude files with .slugignore, or raise selfhost.slug_max_bytes",
    )


def tar_tree(root: Path, out: Path) -> None:
    """A tree as a tar.gz, exactly (modes kept, owners 0, mtimes 0, sorted entries): how
    stage trees travel to and from the platform's stage store."""
    with (
        gzip.GzipFile(out, "wb", compresslevel=GZIP_LEVEL, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for path in [root, *sorted(root.rglob("*"), key=lambda p: p.relative_to(root).parts)]:
            info = tar.gettarinfo(
                str(path), arcname="./" + path.relative_to(root).as_posix() if path != root else "."
            )
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def slug_facts(path: Path) -> tuple[str, int, dict[str, str]]:
    """``(SHA256:checksum, size, process types)`` of a slug file built elsewhere (its
    ``./app/Procfile`` is read from the archive, nothing is unpacked)."""
    try:
        with open(path, "rb") as f:
            sha = hashlib.sha256()
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.isreg() and member.name.lstrip("./") == "app/Procfile":
                    data = tar.extractfile(member)
                    assert data is not None
                    text = data.read(1 << 20).decode("utf-8", "replace")
                    return (
                        f"SHA256:{sha.hexdigest()}",
                        path.stat().st_size,
                        parse_procfile(text, f"{path}:app/Procfile"),
                    )
    except OSError as exc:
        raise SlugError(f"cannot read the slug {path}: {exc.strerror or exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise SlugError(f"{path} is not a gzip-compressed tar: {exc}") from None
    raise SlugError(
        f"{path} has no app/Procfile: it is not a slug",
        hint="a slug is a tar.gz of ./app, with a Procfile (invoke slug makes one)",
    )


# --------------------------------------------------------------------------- unpacking

#: What one slug may unpack to (settings slug_max_unpacked_bytes, slug_max_files).
UNPACK_LIMITS = Limits(max_bytes=2_000_000_000, max_members=200_000)


def _options(limits: Limits) -> dict[str, Any]:
    """How slugs are read: only ``./app`` counts (Heroku ignores the rest), and an
    absolute link target is a path in the dyno, so ``/app/x`` is inside."""
    return {"subtree": "app", "absolute": AbsoluteLinks.ROOTED, "limits": limits, "what": "slug"}


def check_slug(path: Path, limits: Limits = UNPACK_LIMITS) -> Stats:
    """Validate a slug archive without unpacking it; SlugError names the bad entry.

    It is the same walk as :func:`unpack` (see :mod:`selfhost.archive`), so a slug
    accepted at upload unpacks, and one refused here would be refused there too.
    """
    try:
        return archive.check(path, **_options(limits))
    except ArchiveError as exc:
        raise SlugError(f"{exc}; the slug was refused") from None
    except OSError as exc:
        raise SlugError(f"cannot read the slug {path}: {exc.strerror}") from None


def unpack(path: Path, target: Path, limits: Limits = UNPACK_LIMITS) -> Path:
    """Unpack a slug's ``./app`` into ``target/app`` (checked as it goes, atomically)."""
    try:
        archive.extract(path, target, **_options(limits))
    except ArchiveError as exc:
        raise SlugError(f"{exc}; the slug was refused") from None
    (target / "app").mkdir(exist_ok=True)
    return target / "app"
