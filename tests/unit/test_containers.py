"""diff-stages' causes inside containers, each from a real pair built in the test with
the host's gzip, tar, ar and gcc (and Python's zipfile): dates in headers, owners,
order, compression, and where an unexplained ELF difference first shows."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from selfhost.stages.analysis import Cause, analyse

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gzip", "tar", "ar", "gcc")),
    reason="needs gzip, tar, ar, gcc",
)


def run(cwd: Path, *argv: str) -> bytes:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True).stdout


def tree(root: Path, stamp: str = "2020-01-01 00:00") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("a.txt", "alpha\n"), ("b.txt", "beta\n")):
        (root / name).write_text(text)
        run(root, "touch", "-d", stamp, name)
    return root


def test_gzip_header_dates_are_timestamps(tmp_path):
    one = tree(tmp_path / "one", "2020-01-01 00:00")
    two = tree(tmp_path / "two", "2021-06-01 12:00")
    left, right = run(one, "gzip", "-c", "a.txt"), run(two, "gzip", "-c", "a.txt")
    result = analyse(left, right)
    assert (result.kind, result.cause) == ("gzip", Cause.TIMESTAMP), result.evidence
    assert any("MTIME" in e for e in result.evidence)
    # gzip -n leaves the date out: the same bytes
    assert run(one, "gzip", "-nc", "a.txt") == run(two, "gzip", "-nc", "a.txt")


def test_gzip_levels_are_compression(tmp_path):
    one = tree(tmp_path / "one")
    (one / "big.txt").write_text("".join(f"line {i % 97} of many\n" for i in range(20000)))
    left, right = run(one, "gzip", "-nc1", "big.txt"), run(one, "gzip", "-nc9", "big.txt")
    assert left != right
    result = analyse(left, right)
    assert result.cause is Cause.COMPRESSION, result.evidence


def test_tar_member_dates_owners_and_order(tmp_path):
    one = tree(tmp_path / "one", "2020-01-01 00:00")
    two = tree(tmp_path / "two", "2021-06-01 12:00")
    plain = ("tar", "--format=ustar", "--owner=0", "--group=0", "-cf", "-")
    dated = analyse(run(one, *plain, "a.txt", "b.txt"), run(two, *plain, "a.txt", "b.txt"))
    assert (dated.kind, dated.cause) == ("tar", Cause.TIMESTAMP), dated.evidence
    assert any("a.txt: mtime" in e for e in dated.evidence)
    owned = analyse(
        run(one, *plain, "a.txt"),
        run(one, "tar", "--format=ustar", "--owner=1000", "--group=1000", "-cf", "-", "a.txt"),
    )
    assert owned.cause is Cause.METADATA, owned.evidence
    ordered = analyse(run(one, *plain, "a.txt", "b.txt"), run(one, *plain, "b.txt", "a.txt"))
    assert ordered.cause is Cause.ORDERING, ordered.evidence


def test_a_tar_in_a_gzip_is_followed_down(tmp_path):
    one = tree(tmp_path / "one", "2020-01-01 00:00")
    two = tree(tmp_path / "two", "2021-06-01 12:00")
    argv = ("tar", "--format=ustar", "--owner=0", "--group=0", "-czf", "-", "a.txt")
    env = {**os.environ, "GZIP": "-n"}
    left = subprocess.run(argv, cwd=one, env=env, check=True, capture_output=True).stdout
    right = subprocess.run(argv, cwd=two, env=env, check=True, capture_output=True).stdout
    result = analyse(left, right)
    assert (result.kind, result.cause) == ("gzip", Cause.TIMESTAMP), result.evidence
    assert result.members and result.members[0]["kind"] == "tar"


def test_zip_entry_dates(tmp_path):
    def zipped(date: tuple[int, ...]) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            z.writestr(zipfile.ZipInfo("a.txt", date_time=date), "alpha\n")
        return out.getvalue()

    result = analyse(zipped((2020, 1, 1, 0, 0, 0)), zipped((2021, 6, 1, 12, 0, 0)))
    assert (result.kind, result.cause) == ("zip", Cause.TIMESTAMP), result.evidence
    assert any("2020-01-01" in e for e in result.evidence)


def test_ar_member_dates(tmp_path):
    one = tree(tmp_path / "one", "2020-01-01 00:00")
    two = tree(tmp_path / "two", "2021-06-01 12:00")
    for d in (one, two):
        run(d, "ar", "rcU", "lib.a", "a.txt")  # U: real dates (Debian's ar defaults to D)
    result = analyse((one / "lib.a").read_bytes(), (two / "lib.a").read_bytes())
    assert result.cause is Cause.TIMESTAMP, result.evidence


def test_an_unexplained_elf_difference_shows_its_first_bytes_and_section(tmp_path):
    def build(value: int) -> bytes:
        d = tmp_path / str(value)
        d.mkdir()
        (d / "t.c").write_text(
            f"const unsigned char table[64] = {{ {value}, 1, 2, 3 }};\n"
            "int main(int argc, char **argv) { return table[argc]; }\n"
        )
        run(d, "gcc", "-O1", "-o", "t", "t.c")
        return (d / "t").read_bytes()

    result = analyse(build(7), build(9))
    assert result.cause is Cause.UNKNOWN, result.evidence
    assert any("in .rodata" in e for e in result.evidence), result.evidence
    assert result.first_difference is not None and result.excerpt


def test_the_same_bytes_with_another_mode_differ(tmp_path):
    """A tree's digest covers modes: a file built under another umask is a difference."""
    from selfhost.stages.diff import Side, compare_sides

    for name, mode in (("left", 0o755), ("right", 0o775)):
        (tmp_path / name).mkdir()
        tool = tmp_path / name / "tool"
        tool.write_bytes(b"#!/bin/sh\n")
        tool.chmod(mode)
    report = compare_sides(
        Side.from_directory("left", tmp_path / "left"),
        Side.from_directory("right", tmp_path / "right"),
    )
    assert not report.identical
    [result] = report.differing
    assert result.analysis is not None and result.analysis.cause is Cause.METADATA
    assert "0755 / 0775" in result.analysis.evidence[0]


def test_a_compression_bomb_is_compared_as_data_not_opened(monkeypatch):
    """Build outputs are hostile: what would unpack past the limit is not unpacked, and
    nesting stops at MAX_DEPTH."""
    import gzip as gz

    from selfhost.stages import containers

    monkeypatch.setattr(containers, "MAX_PAYLOAD", 1 << 20)
    bomb = b"\0" * (4 << 20)  # 4 MiB of zeros: a few KiB compressed
    left, right = gz.compress(bomb, mtime=1), gz.compress(bomb + b"x", mtime=1)
    result = analyse(left, right)
    assert result.kind == "data", result.kind  # not opened

    # a zip whose member says it unpacks past the limit
    def zipped(data: bytes) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("big", data)
        return out.getvalue()

    assert analyse(zipped(bomb), zipped(bomb + b"x")).kind == "data"
    # nesting: gzip in gzip in ... beyond MAX_DEPTH is data
    a, b = b"one\n", b"two\n"
    for _ in range(containers.MAX_DEPTH + 2):
        a, b = gz.compress(a, mtime=0), gz.compress(b, mtime=0)
    nested = analyse(a, b)
    depth = 0
    node = nested.to_json()
    while node.get("members"):
        node, depth = node["members"][0], depth + 1
    assert depth == containers.MAX_DEPTH and node["kind"] == "data"
