"""The safe extractor: what it refuses, what it keeps, and that it needs no tarfile filter.

Each attack archive is also shown to do harm when unpacked by a naive extractor (plain
``tarfile.extractall`` without a filter), so these tests would fail if the checks went.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from selfhost.archive import AbsoluteLinks, ArchiveError, Limits, check, extract

REPO = Path(__file__).resolve().parents[2]


def make_tar(path: Path, entries: list[tuple], gz: bool = True) -> Path:
    """entries: (name, kind, extra) with kind file (extra: bytes), dir, sym (extra:
    target), link (extra: target), fifo."""
    mode = "w:gz" if gz else "w"
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
        for name, kind, *rest in entries:
            extra = rest[0] if rest else None
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if kind == "file":
                data = extra or b""
                info.size = len(data)
                info.mode = rest[1] if len(rest) > 1 else 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "dev":
                info.type = tarfile.CHRTYPE
            tar.addfile(info)
    return path


def naive_extract(archive: Path, dest: Path) -> None:
    """What extraction looked like without filters (Python 3.11.2's default)."""
    # Python 3.11.4+ has filters (3.14 defaults to "data"); ask for none where it can
    trusting = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfifo() or member.isdev():
                continue
            with contextlib.suppress(OSError, tarfile.TarError):
                tar.extract(member, dest, set_attrs=False, **trusting)


SLUG = {"subtree": "app", "absolute": AbsoluteLinks.ROOTED, "what": "slug"}

ESCAPES = {
    # a symlink chain: each link looks harmless alone, the chain climbs out of /app
    "symlink chain": [
        ("app", "dir"),
        ("app/sub", "dir"),
        ("app/sub/deep", "dir"),
        ("app/sub/deep/a", "sym", "x/../../.."),
        ("app/sub/deep/x", "sym", "../.."),
        ("app/sub/deep/a/pwned", "file", b"owned"),
    ],
    # a link out, then a file written through it
    "write through a link": [
        ("app", "dir"),
        ("app/out", "sym", "../.."),
        ("app/out/pwned", "file", b"owned"),
    ],
    # an absolute link target that is outside /app in the dyno
    "absolute link": [("app", "dir"), ("app/etc", "sym", "/etc")],
    # a later link turns an earlier, harmless one into an escape
    "retargeted": [
        ("app", "dir"),
        ("app/d1", "dir"),
        ("app/d1/d2", "dir"),
        ("app/d1/d2/a", "sym", "x/../.."),
        ("app/d1/d2/x", "sym", ".."),
    ],
    "dotdot": [("app/../pwned", "file", b"owned")],
    "absolute": [("/tmp/pwned", "file", b"owned")],
    "hard link out": [("app", "dir"), ("app/h", "link", "etc/passwd")],
    "fifo": [("app", "dir"), ("app/f", "fifo")],
    "device": [("app", "dir"), ("app/d", "dev")],
}


@pytest.mark.parametrize("attack", sorted(ESCAPES))
def test_escaping_slugs_are_refused(tmp_path: Path, attack: str) -> None:
    archive = make_tar(tmp_path / "evil.tgz", ESCAPES[attack])
    with pytest.raises(ArchiveError):
        check(archive, **SLUG)
    with pytest.raises(ArchiveError):
        extract(archive, tmp_path / "out" / "slug", **SLUG)
    assert not (tmp_path / "out" / "slug").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no staging left


def test_naive_extraction_of_the_chain_writes_outside(tmp_path: Path) -> None:
    """The weakened extractor (no checks) really is fooled by the symlink chain."""
    archive = make_tar(tmp_path / "evil.tgz", ESCAPES["symlink chain"])
    dest = tmp_path / "a" / "b" / "c"
    dest.mkdir(parents=True)
    naive_extract(archive, dest)
    # a -> x/../../.. with x -> ../.. (= app): three levels above app, two above dest
    assert (tmp_path / "a" / "pwned").read_bytes() == b"owned"


def test_good_slug_unpacks_with_links_inside(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "ok.tgz",
        [
            ("./app", "dir"),
            ("./app/bin", "dir"),
            ("./app/bin/run", "file", b"#!/bin/sh\n", 0o4755),
            ("./app/lib", "sym", "bin"),
            ("./app/abs", "sym", "/app/bin/run"),
            ("./app/hard", "link", "app/bin/run"),
            ("./ignored", "file", b"outside app"),
            ("./app/implicit/dir/f", "file", b"x"),
            ("./app/dangling", "sym", "nothing/here"),
        ],
    )
    stats = check(archive, **SLUG)
    out = tmp_path / "slug"
    assert extract(archive, out, **SLUG) == stats
    run = out / "app/bin/run"
    assert run.read_bytes() == b"#!/bin/sh\n"
    assert run.stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert os.readlink(out / "app/lib") == "bin"
    assert (out / "app/hard").stat().st_ino == run.stat().st_ino
    assert (out / "app/implicit/dir/f").read_bytes() == b"x"
    assert not (out / "ignored").exists()
    assert stats.files == 2  # the hard link is not a second copy


def test_limits_refuse_bombs_before_writing(tmp_path: Path) -> None:
    # 64 MiB of zeros compresses to about 64 KiB: refused from its header
    big = tmp_path / "bomb.tgz"
    with tarfile.open(big, "w:gz") as tar:
        info = tarfile.TarInfo("app/zeros")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert big.stat().st_size < 1 << 20
    with pytest.raises(ArchiveError, match="more than 1048576 bytes"):
        extract(big, tmp_path / "out", limits=Limits(max_bytes=1 << 20), **SLUG)
    many = make_tar(tmp_path / "many.tgz", [(f"app/f{i}", "file", b"") for i in range(50)])
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        check(many, limits=Limits(max_members=10), **SLUG)


def test_source_trees_refuse_absolute_links(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "src.tar.gz", [("pkg-1/", "dir"), ("pkg-1/l", "sym", "/usr/share/x")]
    )
    with pytest.raises(ArchiveError, match="outside"):
        check(archive)
    ok = make_tar(
        tmp_path / "ok.tar", [("pkg-1/", "dir"), ("pkg-1/l", "sym", "../pkg-1")], gz=False
    )
    extract(ok, tmp_path / "tree")
    assert os.readlink(tmp_path / "tree/pkg-1/l") == "../pkg-1"


def test_damaged_archives_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(ArchiveError):
        check(bad)
    cut = make_tar(tmp_path / "cut.tgz", [("app/f", "file", os.urandom(100_000))])
    cut.write_bytes(cut.read_bytes()[:5000])
    with pytest.raises(ArchiveError):
        extract(cut, tmp_path / "out", **SLUG)
    assert not (tmp_path / "out").exists()


def test_same_verdicts_on_debians_own_python(tmp_path: Path) -> None:
    """The checks do not depend on the Python patch level: run them on /usr/bin/python3
    (Debian 12's 3.11.2, without tarfile's filters) too."""
    debian = Path("/usr/bin/python3")
    if not debian.exists():
        pytest.skip("no /usr/bin/python3")
    for attack in sorted(ESCAPES):
        make_tar(tmp_path / f"{attack}.tgz", ESCAPES[attack])
    make_tar(tmp_path / "good.tgz", [("app/bin/run", "file", b"x"), ("app/l", "sym", "bin")])
    script = (
        "import sys, pathlib\n"
        "from selfhost.archive import check, extract, ArchiveError, AbsoluteLinks\n"
        "d = pathlib.Path(sys.argv[1])\n"
        "for p in sorted(d.glob('*.tgz')):\n"
        "    try:\n"
        "        extract(p, d / ('out-' + p.stem), subtree='app', absolute=AbsoluteLinks.ROOTED)\n"
        "        print(p.stem, 'ok')\n"
        "    except ArchiveError:\n"
        "        print(p.stem, 'refused')\n"
    )
    proc = subprocess.run(
        [str(debian), "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO)},
        check=True,
    )
    verdicts = dict(line.rsplit(" ", 1) for line in proc.stdout.splitlines())
    assert verdicts == {**{a: "refused" for a in ESCAPES}, "good": "ok"}, proc.stdout
    assert sys.version_info >= (3, 11)
