"""Source fetching over real HTTP (loopback) and real git (a local repository)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from selfhost.compilers.recipe import DebianSource, GitSource, TarballSource
from selfhost.compilers.sources import SourceStore, _orig_from_dsc
from selfhost.errors import ChecksumMismatch, SourceError


def make_tarball(files: dict[str, bytes], top: str | None = "proj-1.0") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store(tmp_path: Path, mirror: str = "http://127.0.0.1:9/none") -> SourceStore:
    return SourceStore(tmp_path / "sources", lambda: mirror)


def test_tarball_is_verified_unpacked_and_cached(tmp_path, http_dir):
    www, base = http_dir
    data = make_tarball({"configure": b"#!/bin/sh\n", "src/main.c": b"int main(){}\n"})
    (www / "proj.tar.gz").write_bytes(data)
    s = store(tmp_path)
    src = TarballSource(url=f"{base}/proj.tar.gz", sha256=sha(data))
    got = s.fetch((src,))
    assert got.digest == f"sha256:{sha(data)}"
    assert (got.tree / "src/main.c").read_bytes() == b"int main(){}\n", "top dir stripped"
    (www / "proj.tar.gz").unlink()  # offline now: the store must answer
    log: list[str] = []
    again = s.fetch((src,), log=log.append)
    assert again.tree == got.tree and "(cached)" in log[0]


def test_checksum_mismatch_is_refused_with_both_values(tmp_path, http_dir):
    www, base = http_dir
    good = make_tarball({"a": b"good"})
    (www / "proj.tar.gz").write_bytes(make_tarball({"a": b"evil"}))
    s = store(tmp_path)
    with pytest.raises(ChecksumMismatch) as info:
        s.fetch((TarballSource(url=f"{base}/proj.tar.gz", sha256=sha(good)),))
    err = info.value
    assert err.expected == sha(good) and err.actual != sha(good)
    assert sha(good) in err.render() and err.actual in err.render()
    assert not list((tmp_path / "sources").glob("trees/*")), "nothing unpacked"
    assert not list((tmp_path / "sources" / "downloads").glob("*")), "nothing kept"


def test_unreachable_source_falls_through_and_all_failures_are_listed(tmp_path, http_dir):
    www, base = http_dir
    data = make_tarball({"a": b"x"})
    (www / "ok.tar.gz").write_bytes(data)
    dead = GitSource(url="http://127.0.0.1:9/nothing.git", commit="62c30a4a")
    good = TarballSource(url=f"{base}/ok.tar.gz", sha256=sha(data))
    assert store(tmp_path).fetch((dead, good)).digest == f"sha256:{sha(data)}"

    missing = TarballSource(url=f"{base}/missing.tar.gz", sha256=sha(data))
    with pytest.raises(SourceError) as info:
        store(tmp_path / "other").fetch((dead, missing))
    text = info.value.render()
    assert "2 tried" in text and "git http://127.0.0.1:9/nothing.git" in text
    assert "missing.tar.gz" in text and "404" in text


def test_corrupt_cached_download_is_fetched_again(tmp_path, http_dir):
    www, base = http_dir
    data = make_tarball({"a": b"x"})
    (www / "p.tar.gz").write_bytes(data)
    s = store(tmp_path)
    s.downloads.mkdir(parents=True)
    (s.downloads / sha(data)).write_bytes(b"bit rot")
    log: list[str] = []
    s.fetch((TarballSource(url=f"{base}/p.tar.gz", sha256=sha(data)),), log=log.append)
    assert any("corrupt" in line for line in log)
    assert (s.downloads / sha(data)).read_bytes() == data


DSC = """\
Format: 3.0 (quilt)
Source: toy
Checksums-Sha256:
 {orig} 100 toy_1.0.orig.tar.gz
 {asc} 10 toy_1.0.orig.tar.gz.asc
 {deb} 20 toy_1.0-1.debian.tar.xz
Files:
 abc 100 toy_1.0.orig.tar.gz
"""


def test_debian_source_from_a_pool_layout(tmp_path, http_dir):
    www, base = http_dir
    data = make_tarball({"a": b"debian"}, top="toy-1.0")
    pool = www / "debian" / "pool" / "main" / "t" / "toy"
    pool.mkdir(parents=True)
    (pool / "toy_1.0.orig.tar.gz").write_bytes(data)
    (pool / "toy_1.0-1.dsc").write_text(DSC.format(orig=sha(data), asc="1" * 64, deb="2" * 64))
    s = store(tmp_path, mirror=f"{base}/debian")
    got = s.fetch((DebianSource(package="toy", version="1:1.0-1", sha256=sha(data)),))
    assert (got.tree / "a").read_bytes() == b"debian"


def debian_tar(files: dict[str, bytes]) -> bytes:
    """A ``.debian.tar.xz``: the ``debian/`` directory of a source package."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"debian/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_debian_source_without_a_dsc_and_its_packaging(tmp_path, http_dir):
    """A mirror that serves the .orig and the debian.tar but no .dsc: the pool's usual
    names are tried; the packaging lands in debian/, its patches marked to apply."""
    www, base = http_dir
    orig = make_tarball({"hello.c": b"int main(void){return 1;}\n"}, top="toy-1.0")
    packaging = debian_tar({"patches/series": b"fix.patch\n", "patches/fix.patch": b"--- a\n"})
    pool = www / "debian" / "pool" / "main" / "t" / "toy"
    pool.mkdir(parents=True)
    (pool / "toy_1.0.orig.tar.gz").write_bytes(orig)
    (pool / "toy_1.0-2.debian.tar.xz").write_bytes(packaging)
    source = DebianSource(
        package="toy", version="1.0-2", sha256=sha(orig), debian_sha256=sha(packaging), patches=True
    )
    lines: list[str] = []
    got = store(tmp_path, mirror=f"{base}/debian").fetch((source,), log=lines.append)
    assert (got.tree / "hello.c").is_file()
    assert (got.tree / "debian" / "patches" / "series").read_bytes() == b"fix.patch\n"
    assert got.patches is True
    assert any("is not in the mirror's pool; trying the .orig by name" in x for x in lines)
    # a pinned packaging that does not match is refused with both digests
    wrong = DebianSource(
        package="toy", version="1.0-2", sha256=sha(orig), debian_sha256="0" * 64, patches=True
    )
    with pytest.raises(ChecksumMismatch):
        store(tmp_path / "other", mirror=f"{base}/debian").fetch((wrong,))


def test_a_debian_source_placed_by_hand_in_downloads(tmp_path):
    """No mirror at all: the documented fallback, downloads/<sha256>, works for Debian
    sources too."""
    orig = make_tarball({"a": b"by hand"}, top="toy-1.0")
    s = store(tmp_path)  # the mirror is unreachable
    s.downloads.mkdir(parents=True)
    (s.downloads / sha(orig)).write_bytes(orig)
    got = s.fetch((DebianSource(package="toy", version="1.0-1", sha256=sha(orig)),))
    assert (got.tree / "a").read_bytes() == b"by hand"


def test_two_named_sources_side_by_side(tmp_path, http_dir):
    from selfhost.compilers.recipe import load_recipe
    from selfhost.compilers.sources import fetch_sources

    www, base = http_dir
    main = make_tarball({"cc.c": b"main"}, top="pcc-1.0")
    libs = make_tarball({"libc.c": b"libs"}, top="pcc-libs-1.0")
    (www / "pcc.tgz").write_bytes(main)
    (www / "pcc-libs.tgz").write_bytes(libs)
    recipe = tmp_path / "pcc.toml"
    recipe.write_text(f"""\
name = "pcc"
version = "1.0"
builder = "$PREFIX/bin/pcc"

[[sources]]
kind = "tarball"
url = "{base}/pcc.tgz"
sha256 = "{sha(main)}"

[[sources]]
name = "libs"
kind = "tarball"
url = "{base}/pcc-libs.tgz"
sha256 = "{sha(libs)}"

[stage0]
builder = "gcc"

[steps]
build = "true"
install = "test -d $DESTDIR"
""")
    got = fetch_sources(tmp_path / "sources", lambda: "", load_recipe(recipe))
    assert list(got.trees) == ["src", "libs"]
    assert (got.trees["src"] / "cc.c").read_bytes() == b"main"
    assert (got.trees["libs"] / "libc.c").read_bytes() == b"libs"
    assert got.digests["src"] != got.digests["libs"]


def test_orig_from_dsc_ignores_signatures():
    text = DSC.format(orig="a" * 64, asc="b" * 64, deb="c" * 64)
    assert _orig_from_dsc(text) == ("toy_1.0.orig.tar.gz", "a" * 64)
    assert _orig_from_dsc("Source: x\n") is None


def test_git_source_pinned_by_abbreviated_commit(tmp_path):
    repo = tmp_path / "upstream"
    repo.mkdir()

    def run(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *a],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    run("init", "-q")
    (repo / "tcc.c").write_text("int main(){return 0;}\n")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    first = run("rev-parse", "HEAD")
    (repo / "tcc.c").write_text("changed\n")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    got = store(tmp_path).fetch((GitSource(url=f"file://{repo}", commit=first[:8]),))
    assert got.digest == f"git:{first}"
    assert (got.tree / "tcc.c").read_text() == "int main(){return 0;}\n"
    assert not (got.tree / ".git").exists()
