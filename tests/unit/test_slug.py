"""Slugs: the Procfile, byte-reproducible packing, .slugignore, limits, lints."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from selfhost.errors import SlugError
from selfhost.platform.slugs.lint import lint_slug, stack_glibc
from selfhost.platform.slugs.slug import (
    SlugContents,
    pack,
    parse_procfile,
    read_slugignore,
)

needs_gcc = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")


def test_procfile_is_parsed_strictly():
    text = "# comment\n\nweb: bin/web --port $PORT\nworker:  bin/worker: with colon \n"
    assert parse_procfile(text) == {
        "web": "bin/web --port $PORT",
        "worker": "bin/worker: with colon",
    }
    for bad, words in (
        ("web bin/web", "expected 'name: command'"),
        ("we b: x", "not valid"),
        ("web:", "has no command"),
        ("web: a\nweb: b", "defined twice"),
        ("x" * 129 + ": y", "not valid"),
    ):
        with pytest.raises(SlugError, match=words) as info:
            parse_procfile(bad, "app/Procfile")
        assert "app/Procfile:" in info.value.message


def make_app(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "run").chmod(0o700)
    (root / "Procfile").write_text("worker: bin/run\n")
    (root / "notes.md").write_text("secret notes\n")
    (root / "docs").mkdir()
    (root / "docs" / "big.pdf").write_bytes(b"%PDF" * 100)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    os.symlink("bin/run", root / "start")
    (root / ".slugignore").write_text("# heroku rules\n*.md\n/docs\n")
    return root


def pack_app(app: Path, out: Path, mtime: int = 1000) -> tuple[bytes, list[str]]:
    contents = SlugContents()
    contents.add_tree(app, ignore=read_slugignore(app))
    info = pack(contents, out, mtime=mtime, process_types={"worker": "bin/run"})
    data = out.read_bytes()
    assert info.checksum == "SHA256:" + hashlib.sha256(data).hexdigest()
    assert info.size == len(data)
    with tarfile.open(out) as tar:
        return data, tar.getnames()


def test_pack_is_byte_reproducible_across_paths_times_and_umasks(tmp_path):
    a = make_app(tmp_path / "one" / "app")
    first, names = pack_app(a, tmp_path / "a.tgz")
    b = make_app(tmp_path / "elsewhere" / "deeper" / "app")
    os.utime(b / "Procfile", (1, 1))
    old = os.umask(0o077)
    try:
        (b / "bin" / "run").chmod(0o750)
        second, _ = pack_app(b, tmp_path / "b.tgz")
    finally:
        os.umask(old)
    assert first == second
    assert names[0] == "./app" and all(n.startswith("./app/") for n in names[1:])
    assert names == [
        "./app",
        "./app/.slugignore",
        "./app/Procfile",
        "./app/bin",
        "./app/bin/run",
        "./app/start",
    ], "sorted, no .git, .slugignore honoured"
    assert first[:10] == bytes.fromhex("1f8b08000000000000ff"), "gzip: no name, no time"
    with tarfile.open(tmp_path / "a.tgz") as tar:
        for m in tar.getmembers():
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1000)
        assert tar.getmember("./app/bin/run").mode == 0o755
        assert tar.getmember("./app/Procfile").mode == 0o644
        assert tar.getmember("./app/start").issym()
    other_time, _ = pack_app(a, tmp_path / "c.tgz", mtime=2000)
    assert other_time != first, "SOURCE_DATE_EPOCH is the only clock"


def test_size_limit_refuses_and_writes_nothing(tmp_path):
    contents = SlugContents()
    contents.add_file("blob", data=os.urandom(200_000))
    with pytest.raises(SlugError, match="above the hard limit"):
        pack(contents, tmp_path / "s.tgz", mtime=0, process_types={}, max_bytes=100_000)
    assert list(tmp_path.iterdir()) == [], "no partial slug is left"


def test_big_slugs_get_a_warning(tmp_path, monkeypatch):
    import selfhost.platform.slugs.slug as slug_module

    monkeypatch.setattr(slug_module, "WARN_BYTES", 1000)
    contents = SlugContents()
    contents.add_file("blob", data=os.urandom(5000))
    info = pack(contents, tmp_path / "s.tgz", mtime=0, process_types={})
    assert info.warnings and "soft limit" in info.warnings[0]
    assert info.to_json()["warnings"] == info.warnings


def test_special_files_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SlugError, match="special files"):
        SlugContents().add_tree(tmp_path)


# ------------------------------------------------------------------------- lints


def fake_rootfs(tmp_path: Path, glibc_max: str = "2.31") -> Path:
    """A rootfs with a libc.so.6 that defines GLIBC_2.2.5 .. GLIBC_<glibc_max>."""
    root = tmp_path / "rootfs"
    lib = root / "lib" / "x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (root / "lib64").mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "sh").write_text("")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "env").write_text("")
    os.symlink(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "lib64" / "ld-linux-x86-64.so.2"
    )
    (lib / "ld-linux-x86-64.so.2").write_text("")
    minor = int(glibc_max.split(".")[1])
    nodes = ["GLIBC_2.2.5"] + [f"GLIBC_2.{n}" for n in range(3, minor + 1)]
    script = "".join(
        f"{n} {{ {'global: fake;' if i == 0 else ''} }};\n" for i, n in enumerate(nodes)
    )
    (tmp_path / "v.map").write_text(script)
    (tmp_path / "fake.c").write_text("int fake(void) { return 0; }\n")
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-o",
            str(lib / "libc.so.6"),
            f"-Wl,--version-script={tmp_path / 'v.map'}",
            str(tmp_path / "fake.c"),
        ],
        check=True,
    )
    return root


def compile_c(tmp_path: Path, name: str, *flags: str, code: str = "") -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(code or '#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')
    out = tmp_path / name
    subprocess.run(["gcc", *flags, str(src), "-o", str(out)], check=True)
    return out


@needs_gcc
def test_stack_glibc_reads_version_definitions(tmp_path):
    newest, names = stack_glibc(fake_rootfs(tmp_path, "2.31"))
    assert newest == (2, 31) and "GLIBC_2.2.5" in names


@needs_gcc
def test_lints_fire_on_crafted_files(tmp_path):
    rootfs = fake_rootfs(tmp_path, "2.31")
    contents = SlugContents()
    ok = compile_c(tmp_path, "ok", "-Wl,-rpath,$ORIGIN/../lib")
    contents.add_file("bin/ok", source=ok, executable=True)
    contents.add_file(
        "bin/rpath", source=compile_c(tmp_path, "rp", "-Wl,-rpath,/home/me/lib"), executable=True
    )
    contents.add_file(
        "bin/interp",
        source=compile_c(tmp_path, "in", "-Wl,--dynamic-linker=/opt/weird/ld.so"),
        executable=True,
    )
    contents.add_file("share/paths.txt", data=b"built in /work/ws/tmp/abc\n")
    contents.add_file("bin/py", data=b"#!/usr/bin/python9\nprint(1)\n", executable=True)
    contents.add_file("bin/envy", data=b"#!/usr/bin/env nosuchtool\n", executable=True)
    contents.add_file("bin/fine", data=b"#!/bin/sh\necho ok\n", executable=True)
    contents.add_file("bin/mine", data=b"#!/app/bin/fine\n", executable=True)
    found = {(x.kind, x.path) for x in lint_slug(contents, rootfs, ["/work/ws"])}
    assert ("rpath", "/app/bin/rpath") in found
    assert ("interpreter", "/app/bin/interp") in found
    assert ("build-path", "/app/share/paths.txt") in found
    assert ("shebang", "/app/bin/py") in found
    assert ("shebang", "/app/bin/envy") in found
    assert not any(p in {"/app/bin/fine", "/app/bin/mine"} for _, p in found)
    assert ("rpath", "/app/bin/ok") not in found, "$ORIGIN-relative RUNPATH is fine"
    # Built here (glibc 2.36) and run on a 2.31 stack: __libc_start_main@GLIBC_2.34.
    glibc = [x for x in lint_slug(contents, rootfs) if x.kind == "glibc"]
    assert glibc and "GLIBC_2.34" in glibc[0].message and "GLIBC_2.31" in glibc[0].message
    assert "__libc_start_main@GLIBC_2.34" in glibc[0].message
    newer = fake_rootfs(tmp_path / "new", "2.36")
    assert not [x for x in lint_slug(contents, newer) if x.kind == "glibc"]


# ------------------------------------------------------------------------- unpacking


def evil_slug(tmp_path: Path, make: str) -> Path:
    path = tmp_path / f"{make}.tgz"
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x"):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("./app/ok.txt")
        match make:
            case "dotdot":
                add("./app/../../etc/cron.d/evil")
            case "absolute":
                add("/etc/passwd")
            case "symlink":
                add("./app/link", tarfile.SYMTYPE, "../../../etc")
            case "abs-symlink":
                add("./app/link", tarfile.SYMTYPE, "/etc/shadow")
            case "hardlink":
                add("./app/hard", tarfile.LNKTYPE, "/etc/passwd")
            case "device":
                add("./app/dev", tarfile.CHRTYPE)
            case "fine":
                add("./app/bin/tool", tarfile.SYMTYPE, "../ok.txt")
                add("./app/abs", tarfile.SYMTYPE, "/app/ok.txt")
                add("./app/hard", tarfile.LNKTYPE, "./app/ok.txt")
                add("./outside/ignored.txt")
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        ("dotdot", "contains '..'"),
        ("absolute", "absolute path"),
        ("symlink", "symlink to '../../../etc', outside /app"),
        ("abs-symlink", "symlink to '/etc/shadow'"),
        ("hardlink", "hard link"),
        ("device", "device file"),
    ],
)
def test_escaping_entries_are_refused_before_unpacking(tmp_path, make, words):
    from selfhost.platform.slugs.slug import check_slug, unpack

    path = evil_slug(tmp_path, make)
    with pytest.raises(SlugError, match=words):
        check_slug(path)
    target = tmp_path / "unpacked"
    with pytest.raises(SlugError):
        unpack(path, target)
    assert not target.exists() and not list(tmp_path.glob(".unpacked.*")), "nothing unpacked"


def test_good_links_unpack_and_outside_entries_are_ignored(tmp_path):
    from selfhost.platform.slugs.slug import unpack

    app = unpack(evil_slug(tmp_path, "fine"), tmp_path / "u")
    assert (app / "bin" / "tool").resolve() == (app / "ok.txt").resolve()
    assert os.readlink(app / "abs") == "/app/ok.txt"
    assert not (tmp_path / "u" / "outside").exists()
