"""Fetch a recipe's source: the first of its sources that works, verified and unpacked.

Sources are tried in the recipe's order of preference, but a source that is already in
the store is used before any network access (so an offline re-run never waits on a
dead upstream). Every download is checked against the sha256 pinned in the recipe
before it is unpacked; a mismatch is refused and reported with both values. When every
source fails, the error lists what was tried and why each attempt failed.

Store layout (under ``<workspace>/sources``)::

    downloads/<sha256>            verified tarballs, named by their content hash
    trees/<key>/tree/             pristine unpacked sources (never built in)
    trees/<key>/source.json       {"digest", "origin", "kind", ...}
    tmp/                          partial downloads and unpacks (safe to delete)

``<key>`` is ``sha256-<hex>`` for tarballs and Debian sources and ``git-<commit>`` for
git sources, so it is known from the recipe alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfhost.archive import ArchiveError
from selfhost.archive import extract as safe_extract
from selfhost.compilers.recipe import DebianSource, GitSource, Source, TarballSource
from selfhost.errors import ChecksumMismatch, SourceError
from selfhost.hashing import CHUNK, sha256_file

DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is abandoned
Log = Callable[[str], None]


@dataclass(frozen=True)
class FetchedSource:
    """A verified, unpacked source tree and where it came from."""

    digest: str  # "sha256:<hex>" or "git:<full commit>"
    tree: Path
    origin: str  # human description of the source that was used
    kind: str


@dataclass(frozen=True)
class Attempt:
    """One source tried, and why it failed."""

    source: str
    reason: str


class SourceStore:
    """The content-addressed store of downloads and pristine source trees."""

    def __init__(self, root: Path, mirror: Callable[[], str]):
        self.root = root
        self._mirror = mirror  # called lazily: only Debian sources need it
        self.downloads = root / "downloads"
        self.trees = root / "trees"
        self.tmp = root / "tmp"

    # ------------------------------------------------------------------ public
    def fetch(self, sources: tuple[Source, ...], log: Log = lambda _: None) -> FetchedSource:
        """Return the first source that is cached, else the first that can be fetched."""
        for source in sources:
            cached = self._cached(source)
            if cached:
                log(f"source: {source.describe()} (cached)")
                return cached
        attempts: list[Attempt] = []
        mismatch: ChecksumMismatch | None = None
        for source in sources:
            log(f"source: fetching {source.describe()}")
            try:
                return self._fetch(source, log)
            except ChecksumMismatch as exc:
                mismatch = exc
                attempts.append(
                    Attempt(
                        source.describe(),
                        f"{exc.message}: expected {exc.expected}, got {exc.actual}",
                    )
                )
                log(f"warning: {source.describe()}: sha256 mismatch, refused")
            except SourceError as exc:
                attempts.append(Attempt(source.describe(), exc.message))
                log(f"source: {source.describe()} failed: {exc.message}")
        details = "\n".join(f"  - {a.source}: {a.reason}" for a in attempts)
        if mismatch and len(attempts) == 1:
            raise ChecksumMismatch(sources[0].describe(), mismatch.expected, mismatch.actual)
        raise SourceError(
            f"no source could be fetched ({len(attempts)} tried)",
            details="tried, in order:\n" + details,
            hint="check the network or the mirror (selfhost.mirror); a tarball can also be "
            f"placed by hand in {self.downloads}/<sha256>",
        )

    # ------------------------------------------------------------------ keys
    @staticmethod
    def key(source: Source) -> str:
        """The store key of a source, known from the recipe alone."""
        if isinstance(source, GitSource):
            return f"git-{source.commit}"
        return f"sha256-{source.sha256}"

    def _cached(self, source: Source) -> FetchedSource | None:
        entry = self.trees / self.key(source)
        meta = entry / "source.json"
        if not meta.is_file():
            return None
        data = json.loads(meta.read_text())
        return FetchedSource(data["digest"], entry / "tree", data["origin"], data["kind"])

    # ------------------------------------------------------------------ fetchers
    def _fetch(self, source: Source, log: Log) -> FetchedSource:
        self.tmp.mkdir(parents=True, exist_ok=True)
        if isinstance(source, GitSource):
            return self._fetch_git(source, log)
        if isinstance(source, TarballSource):
            archive = self._download(source.url, source.sha256, source.describe(), log)
        elif isinstance(source, DebianSource):
            archive = self._fetch_debian(source, log)
        else:  # pragma: no cover - the recipe loader only builds the three kinds
            raise SourceError(f"unknown source kind {source!r}")
        return self._unpack(source, archive, f"sha256:{source.sha256}")

    def _download(self, url: str, sha256: str, what: str, log: Log) -> Path:
        """Download ``url`` to ``downloads/<sha256>``, verifying it on the way."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        target = self.downloads / sha256
        if target.is_file():
            actual = sha256_file(target)
            if actual == sha256:
                return target
            log(f"warning: cached download {target} is corrupt (sha256 {actual}); fetching again")
            target.unlink()
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="download-")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "selfhost"})
                with (
                    urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as resp,
                    os.fdopen(fd, "wb") as out,
                ):
                    while chunk := resp.read(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise SourceError(f"cannot download {url}: {_why(exc)}") from None
            actual = h.hexdigest()
            if actual != sha256:
                raise ChecksumMismatch(what, sha256, actual)
            os.replace(tmp, target)
            log(f"source: downloaded {url} ({target.stat().st_size} bytes, sha256 ok)")
            return target
        finally:
            tmp.unlink(missing_ok=True)

    def _fetch_debian(self, source: DebianSource, log: Log) -> Path:
        """Find the ``.orig`` tarball of a Debian source package in the mirror's pool."""
        mirror = self._mirror()
        version = source.version.split(":", 1)[-1]  # the epoch is not part of file names
        pool_dir = source.package[:4] if source.package.startswith("lib") else source.package[0]
        dsc_name = f"{source.package}_{version}.dsc"
        tried = []
        for component in ("main", "contrib", "non-free"):
            base = f"{mirror}/pool/{component}/{pool_dir}/{source.package}"
            try:
                with urllib.request.urlopen(f"{base}/{dsc_name}", timeout=DOWNLOAD_TIMEOUT) as r:
                    dsc = r.read().decode("utf-8", "replace")
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                tried.append(f"{component}: {_why(exc)}")
        else:
            raise SourceError(f"{dsc_name} not found in the mirror's pool ({'; '.join(tried)})")
        orig = _orig_from_dsc(dsc)
        if orig is None:
            raise SourceError(f"{dsc_name} lists no .orig tarball (a native package?)")
        name, listed_sha = orig
        if listed_sha != source.sha256:
            raise ChecksumMismatch(f"{name} (as listed in {dsc_name})", source.sha256, listed_sha)
        return self._download(
            f"{base}/{urllib.parse.quote(name)}",
            source.sha256,
            f"{name} from {source.describe()}",
            log,
        )

    def _fetch_git(self, source: GitSource, log: Log) -> FetchedSource:
        import git  # gitpython is imported lazily: most runs never need it

        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix="git-"))
        try:
            repo = git.Repo.init(work / "repo")
            repo.create_remote("origin", source.url)
            env = {"GIT_TERMINAL_PROMPT": "0"}
            try:
                with repo.git.custom_environment(**env):
                    if len(source.commit) == 40:
                        repo.git.fetch(
                            "--depth=1", "origin", source.commit, kill_after_timeout=1800
                        )
                    else:  # an abbreviated pin needs the history to resolve it
                        repo.git.fetch("origin", kill_after_timeout=1800)
                full = repo.git.rev_parse("--verify", f"{source.commit}^{{commit}}")
            except git.GitCommandError as exc:
                text = str(exc.stderr or exc).strip().strip("'")
                lines = [ln.strip() for ln in text.splitlines()]
                reason = lines[-1].removeprefix("stderr: ").strip("'") if lines else str(exc)
                raise SourceError(f"git fetch failed: {reason}") from None
            if not full.startswith(source.commit):
                raise SourceError(f"{source.commit} resolved to {full}, which does not match")
            tree = work / "tree"
            tree.mkdir()
            repo.git.execute(["git", f"--work-tree={tree}", "checkout", full, "--", "."])
            log(f"source: {source.url} at {full}")
            return self._commit(source, tree, f"git:{full}")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ unpacking
    def _unpack(self, source: Source, archive: Path, digest: str) -> FetchedSource:
        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix="unpack-"))
        try:
            try:
                safe_extract(archive, work / "x", what=f"source tarball {archive.name}")
            except ArchiveError as exc:
                raise SourceError(f"cannot unpack {archive.name}: {exc}") from None
            entries = list((work / "x").iterdir())
            # A single top-level directory (go/, project-1.0/) is the tree itself.
            tree = entries[0] if len(entries) == 1 and entries[0].is_dir() else work / "x"
            return self._commit(source, tree, digest)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _commit(self, source: Source, tree: Path, digest: str) -> FetchedSource:
        """Move a finished tree into the store atomically (rename of a whole entry)."""
        entry = self.trees / self.key(source)
        staging = Path(tempfile.mkdtemp(dir=self.tmp, prefix="entry-"))
        shutil.move(str(tree), staging / "tree")
        meta = {"digest": digest, "origin": source.describe(), "kind": source.kind}
        (staging / "source.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.trees.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(entry, ignore_errors=True)
        os.rename(staging, entry)
        return FetchedSource(digest, entry / "tree", meta["origin"], source.kind)


def _why(exc: Exception) -> str:
    """A short reason for a failed request: the HTTP status, or the network error."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    return str(getattr(exc, "reason", None) or exc)


_DSC_SHA = re.compile(r"^Checksums-Sha256:\s*$", re.M)


def _orig_from_dsc(dsc: str) -> tuple[str, str] | None:
    """Return ``(file name, sha256)`` of the upstream tarball listed in a ``.dsc``."""
    m = _DSC_SHA.search(dsc)
    if not m:
        return None
    for line in dsc[m.end() :].lstrip("\n").splitlines():
        if not line.startswith(" "):
            break
        parts = line.split()
        if len(parts) == 3 and ".orig.tar." in parts[2] and not parts[2].endswith(".asc"):
            return parts[2], parts[0]
    return None
