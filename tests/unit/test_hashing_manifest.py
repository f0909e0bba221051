"""Digests, tree scans, globs, manifests."""

from __future__ import annotations

import os

import pytest

from selfhost.hashing import FileEntry, canonical_json, digest_json, scan_tree, tree_digest
from selfhost.stages.manifest import Manifest, TestResult, glob_match, select_artifacts


def test_canonical_json_ignores_key_order():
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
    assert digest_json({"x": "é"}) == digest_json({"x": "é"})


def test_scan_tree_records_kinds_modes_and_contents(tmp_path):
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "cc"
    exe.write_bytes(b"\x7fELF")
    exe.chmod(0o755)
    os.symlink("cc", tmp_path / "bin" / "c99")
    entries = {e.path: e for e in scan_tree(tmp_path)}
    assert entries["bin"].kind == "dir"
    assert entries["bin/cc"].mode == 0o755 and entries["bin/cc"].size == 4
    assert entries["bin/c99"].kind == "symlink" and entries["bin/c99"].target == "cc"
    before = tree_digest(list(entries.values()))
    exe.chmod(0o700)
    assert tree_digest(scan_tree(tmp_path)) != before, "a mode change must change the digest"


def test_scan_tree_refuses_special_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="a FIFO"):
        scan_tree(tmp_path)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("bin/*", "bin/tcc", True),
        ("bin/*", "bin/sub/tcc", False),
        ("bin/**", "bin/sub/tcc", True),
        ("**/*.a", "lib/tcc/libtcc1.a", True),
        ("**/*.a", "libtcc.a", True),
        ("lib/?.o", "lib/a.o", True),
        ("lib/?.o", "lib/ab.o", False),
        ("**", "anything/at/all", True),
    ],
)
def test_glob_match(pattern, path, expected):
    assert glob_match(pattern, path) is expected


def test_select_artifacts_is_relative_to_prefix():
    files = [
        FileEntry("opt/tcc", "dir", 0o755),
        FileEntry("opt/tcc/bin/tcc", "file", 0o755, 3, "aa"),
        FileEntry("opt/tcc/share/man/tcc.1", "file", 0o644, 3, "bb"),
        FileEntry("opt/tcc/lib/link", "symlink", 0o777, target="x"),
        FileEntry("etc/elsewhere", "file", 0o644, 1, "cc"),
    ]
    arts = select_artifacts(files, "/opt/tcc", ("bin/**", "lib/**"))
    assert arts == {"bin/tcc": "aa", "lib/link": "symlink:x"}


def test_manifest_round_trip(tmp_path):
    m = Manifest(
        compiler="tcc",
        version="1",
        prefix="/opt/tcc",
        stage=2,
        input_hash="k" * 64,
        inputs={"engine": "bwrap"},
        tree_digest="t" * 64,
        files=[FileEntry("a", "file", 0o644, 1, "s" * 64)],
        artifacts={"a": "s" * 64},
        tests=TestResult("make test", 0, 1.5, ["ok"]),
        timings={"build": 1.23456},
        logs={"stage": "logs/stage.log"},
        created="now",
        selfhost_version="0.1.0",
    )
    m.write(tmp_path / "manifest.json")
    assert oct((tmp_path / "manifest.json").stat().st_mode & 0o777) == "0o644"
    back = Manifest.load(tmp_path / "manifest.json")
    assert back.files == m.files and back.tests and back.tests.passed
    assert back.to_json()["tests"]["passed"] is True
    assert back.timings["build"] == 1.235
