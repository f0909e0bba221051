"""Fetch an app for an app-compile job: a git URL, a tarball URL or a local directory.

The platform fetches (it has git and the network; the stack and the worker dynos need
neither) and keeps the app as a normalised tarball, named by its sha256, that the worker
downloads (``GET /jobs/{id}/source``). The tarball has the slug layout (``./app/...``,
sorted, fixed mtimes), so the same app gives the same blob, and duplicate submissions
of it are recognised.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from selfhost.archive import ArchiveError, Limits, extract
from selfhost.errors import SlugError
from selfhost.platform.slugs.slug import SlugContents, pack, read_slugignore

FETCH_TIMEOUT = 120
MAX_APP_BYTES = 200_000_000


def _is_git(source: str) -> bool:
    parsed = urllib.parse.urlsplit(source)
    return (
        source.endswith(".git")
        or parsed.scheme in ("git", "ssh", "git+https", "git+http")
        or source.startswith("git@")
        or (Path(source) / ".git").exists()
    )


def _fetch_git(source: str, ref: str | None, into: Path) -> None:
    import git

    url = source.removeprefix("git+")
    try:
        repo = git.Repo.clone_from(url, into, no_checkout=ref is not None)
        if ref is not None:
            repo.git.checkout(ref)
    except git.GitCommandError as exc:
        raise ValueError(
            f"git could not fetch {source}{f' at {ref}' if ref else ''}: {exc.stderr.strip()}"
        ) from None


def _fetch_tarball(source: str, into: Path) -> None:
    """Download (or copy) a tar archive and unpack it safely into ``into`` (new)."""
    parsed = urllib.parse.urlsplit(source)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "app.tar"
        if parsed.scheme in ("http", "https", "file"):
            try:
                with (
                    urllib.request.urlopen(source, timeout=FETCH_TIMEOUT) as resp,
                    open(archive, "wb") as out,
                ):
                    shutil.copyfileobj(resp, out)
            except (urllib.error.URLError, OSError) as exc:
                raise ValueError(f"cannot download {source}: {exc}") from None
        elif Path(source).is_file():
            shutil.copyfile(source, archive)
        else:
            raise ValueError(f"{source} is neither a URL nor an existing file or directory")
        if archive.stat().st_size > MAX_APP_BYTES:
            raise ValueError(f"{source} is larger than {MAX_APP_BYTES} bytes")
        try:
            # links may not leave the app; no devices; bounded like a slug
            extract(
                archive,
                into,
                limits=Limits(max_bytes=MAX_APP_BYTES * 4),
                what=f"app archive {source}",
            )
        except ArchiveError as exc:
            raise ValueError(f"{source}: {exc}; the app was refused") from None


def _app_root(tree: Path) -> Path:
    """The directory with the Procfile: the tree itself, or its single top directory
    (as in ``app-1.0/Procfile`` tarballs)."""
    if (tree / "Procfile").is_file():
        return tree
    entries = [p for p in tree.iterdir() if p.name != ".git"]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "Procfile").is_file():
        return entries[0]
    raise ValueError(
        "the app has no Procfile at its top (a Procfile says what the app runs, "
        "for example 'web: ./hello')"
    )


def fetch_app_source(source: str, ref: str | None, blobs: Path) -> str:
    """Fetch ``source`` and store it under ``blobs/<sha256>.tar.gz``; return the sha256."""
    with tempfile.TemporaryDirectory(dir=blobs, prefix=".fetch-") as tmp:
        tree = Path(tmp) / "tree"
        if _is_git(source):
            _fetch_git(source, ref, tree)
        elif Path(source).is_dir():
            if ref:
                raise ValueError("a ref can only be given for a git source")
            shutil.copytree(source, tree, symlinks=True)
        else:
            if ref:
                raise ValueError("a ref can only be given for a git source")
            _fetch_tarball(source, tree)
        root = _app_root(tree)
        contents = SlugContents()
        contents.add_tree(root, ignore=read_slugignore(root))
        try:
            info = pack(
                contents,
                Path(tmp) / "app.tar.gz",
                mtime=0,
                process_types={},
                max_bytes=MAX_APP_BYTES,
            )
        except SlugError as exc:
            raise ValueError(exc.message) from None
        target = blobs / f"{info.sha256}.tar.gz"
        os.replace(Path(tmp) / "app.tar.gz", target)
        return info.sha256
