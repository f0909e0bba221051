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
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfhost.archive import ArchiveError
from selfhost.archive import extract as safe_extract
from selfhost.compilers.recipe import (
    MAIN,
    DebianSource,
    GitSource,
    Recipe,
    Source,
    TarballSource,
)
from selfhost.errors import ChecksumMismatch, SourceError
from selfhost.hashing import CHUNK, digest_json, scan_tree, sha256_file, tree_digest

DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is abandoned
Log = Callable[[str], None]


@dataclass(frozen=True)
class FetchedSource:
    """A verified, unpacked source tree and where it came from."""

    digest: str  # "sha256:<hex>" or "git:<full commit>"
    tree: Path
    origin: str  # human description of the source that was used
    kind: str
    tree_digest: str = ""  # of the normalised tree: what stage input hashes use
    patches: bool = False  # Debian's patch series (debian/patches/series) to apply


@dataclass(frozen=True)
class Sources:
    """A recipe's sources, one fetched tree per group (unpacked at /build/<group>)."""

    groups: dict[str, FetchedSource]

    @property
    def trees(self) -> dict[str, Path]:
        return {name: s.tree for name, s in self.groups.items()}

    @property
    def digests(self) -> dict[str, str]:
        """Each group's normalised tree digest: the sources' part of a stage's key."""
        return {name: s.tree_digest for name, s in self.groups.items()}

    @property
    def patches(self) -> tuple[str, ...]:
        """The groups whose Debian patch series the build applies first."""
        return tuple(name for name, s in self.groups.items() if s.patches)

    @property
    def origin(self) -> str:
        return "; ".join(
            s.origin if name == MAIN else f"{name}: {s.origin}" for name, s in self.groups.items()
        )

    @property
    def digest(self) -> str:
        """One identity for all the groups (the main tree's digest when there is one)."""
        digests = self.digests
        return digests[MAIN] if list(digests) == [MAIN] else digest_json(digests)


def fetch_sources(
    root: Path, mirror: Callable[[], str], recipe: Recipe, log: Log = lambda _: None
) -> Sources:
    """Fetch each source group of a recipe (the first alternative that works)."""
    store = SourceStore(root, mirror)
    return Sources(
        {
            name: store.fetch(alternatives, log=log)
            for name, alternatives in recipe.source_groups.items()
        }
    )


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
        if isinstance(source, DebianSource) and source.debian_sha256:
            return f"sha256-{source.sha256}-debian-{source.debian_sha256[:16]}"
        return f"sha256-{source.sha256}"

    def _cached(self, source: Source) -> FetchedSource | None:
        entry = self.trees / self.key(source)
        meta = entry / "source.json"
        if not meta.is_file():
            return None
        data = json.loads(meta.read_text())
        if "tree_digest" not in data:  # stored by an older selfhost: normalise it now
            normalise_tree(entry / "tree")
            data["tree_digest"] = source_tree_digest(entry / "tree")
            meta.write_text(json.dumps(data, indent=2) + "\n")
        return FetchedSource(
            data["digest"],
            entry / "tree",
            data["origin"],
            data["kind"],
            data["tree_digest"],
            bool(data.get("patches")),
        )

    # ------------------------------------------------------------------ fetchers
    def _fetch(self, source: Source, log: Log) -> FetchedSource:
        self.tmp.mkdir(parents=True, exist_ok=True)
        if isinstance(source, GitSource):
            return self._fetch_git(source, log)
        if isinstance(source, TarballSource):
            archive = self._download(source.url, source.sha256, source.describe(), log)
        elif isinstance(source, DebianSource):
            archive = self._fetch_debian(source, log)
            if source.debian_sha256:
                packaging = self._fetch_debian_patches(source, log)
                return self._unpack(source, archive, f"sha256:{source.sha256}", packaging)
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
        """The ``.orig`` tarball of a Debian source package, from the mirror's pool.

        The ``.dsc`` names the file when the mirror has it (and its listed sha256 must be
        the pinned one); without it, the pool's usual names are tried
        (``PACKAGE_UPSTREAM.orig.tar.{gz,xz,bz2}``). Either way the download must have
        the pinned sha256."""
        cached = self.downloads / source.sha256  # also where a user may put it by hand
        if cached.is_file() and sha256_file(cached) == source.sha256:
            return cached
        upstream = debian_upstream_version(source.version)
        names = [f"{source.package}_{upstream}.orig.tar.{ext}" for ext in ("gz", "xz", "bz2")]
        dsc_name = f"{source.package}_{source.version.split(':', 1)[-1]}.dsc"
        dsc, base = self._pool_file(source.package, dsc_name)
        if dsc is not None:
            orig = _orig_from_dsc(dsc.decode("utf-8", "replace"))
            if orig is None:
                raise SourceError(f"{dsc_name} lists no .orig tarball (a native package?)")
            name, listed_sha = orig
            if listed_sha != source.sha256:
                raise ChecksumMismatch(
                    f"{name} (as listed in {dsc_name})", source.sha256, listed_sha
                )
            names = [name]
        else:
            log(f"source: {dsc_name} is not in the mirror's pool; trying the .orig by name")
        return self._from_pool(source.package, names, source.sha256, source.describe(), log, base)

    def _fetch_debian_patches(self, source: DebianSource, log: Log) -> Path:
        """Debian's packaging (``debian.tar.*``) of the same version, pinned by sha256."""
        assert source.debian_sha256 is not None
        version = source.version.split(":", 1)[-1]
        names = [f"{source.package}_{version}.debian.tar.{ext}" for ext in ("xz", "gz", "bz2")]
        return self._from_pool(
            source.package,
            names,
            source.debian_sha256,
            f"Debian's packaging of {source.describe()}",
            log,
            None,
        )

    def _pool_file(self, package: str, name: str) -> tuple[bytes | None, str | None]:
        """A small file of a package's pool directory (the component found), or None."""
        for base in self._pool_dirs(package):
            try:
                with urllib.request.urlopen(
                    f"{base}/{urllib.parse.quote(name)}", timeout=DOWNLOAD_TIMEOUT
                ) as resp:
                    return resp.read(), base
            except (urllib.error.URLError, OSError, ValueError):
                continue
        return None, None

    def _pool_dirs(self, package: str) -> list[str]:
        mirror = self._mirror()
        pool_dir = package[:4] if package.startswith("lib") else package[0]
        return [
            f"{mirror}/pool/{component}/{pool_dir}/{package}"
            for component in ("main", "contrib", "non-free")
        ]

    def _from_pool(
        self, package: str, names: list[str], sha256: str, what: str, log: Log, base: str | None
    ) -> Path:
        """Download the first of ``names`` found in the package's pool directory."""
        target = self.downloads / sha256
        if target.is_file() and sha256_file(target) == sha256:
            return target
        tried = []
        for directory in [base] if base else self._pool_dirs(package):
            for name in names:
                url = f"{directory}/{urllib.parse.quote(name)}"
                try:
                    return self._download(url, sha256, f"{name} from {what}", log)
                except ChecksumMismatch:
                    raise
                except SourceError as exc:
                    tried.append(f"{name}: {exc.message.rsplit(': ', 1)[-1]}")
        raise SourceError(
            f"{what}: not found in the mirror's pool",
            details="tried: " + "; ".join(dict.fromkeys(tried)),
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
    def _unpack(
        self, source: Source, archive: Path, digest: str, packaging: Path | None = None
    ) -> FetchedSource:
        """Unpack a verified tarball (and Debian's packaging as ``debian/`` in it)."""
        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix="unpack-"))
        try:
            try:
                safe_extract(archive, work / "x", what=f"source tarball {archive.name}")
                tree = _top(work / "x")
                if packaging is not None:
                    safe_extract(packaging, work / "deb", what=f"Debian packaging {packaging.name}")
                    if not (work / "deb" / "debian").is_dir():
                        raise SourceError(f"{packaging.name} has no debian/ directory")
                    shutil.rmtree(tree / "debian", ignore_errors=True)
                    os.rename(work / "deb" / "debian", tree / "debian")
            except ArchiveError as exc:
                raise SourceError(f"cannot unpack {archive.name}: {exc}") from None
            return self._commit(source, tree, digest)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _commit(self, source: Source, tree: Path, digest: str) -> FetchedSource:
        """Move a finished tree into the store atomically (rename of a whole entry)."""
        entry = self.trees / self.key(source)
        staging = Path(tempfile.mkdtemp(dir=self.tmp, prefix="entry-"))
        shutil.move(str(tree), staging / "tree")
        normalise_tree(staging / "tree")
        patches = isinstance(source, DebianSource) and source.patches
        meta: dict[str, Any] = {
            "digest": digest,
            "origin": source.describe(),
            "kind": source.kind,
            "tree_digest": source_tree_digest(staging / "tree"),
            "patches": patches,
        }
        (staging / "source.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.trees.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(entry, ignore_errors=True)
        os.rename(staging, entry)
        return FetchedSource(
            digest, entry / "tree", meta["origin"], source.kind, meta["tree_digest"], patches
        )


def _top(directory: Path) -> Path:
    """A tarball with a single top-level directory (go/, project-1.0/) is that tree."""
    entries = list(directory.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else directory


def debian_upstream_version(version: str) -> str:
    """The upstream part of a Debian version: no epoch, no Debian revision."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def normalise_tree(root: Path) -> None:
    """Give a source tree the modes a slug gives it (directories and executables 0755,
    other files 0644), so that the store's tree and a slug's copy of it are the same
    tree to every builder and digest."""
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)
        for name in files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, 0o755 if st.st_mode & 0o111 else 0o644)
    os.chmod(root, 0o755)


def source_tree_digest(root: Path) -> str:
    """The identity of a source tree in stage input hashes: its tree digest (modes
    normalised, so the store's tree and a slug's copy of it agree)."""
    return tree_digest(scan_tree(root))


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
