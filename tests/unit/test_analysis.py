"""Classifying real binary differences, built by the host's gcc in each test."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from selfhost.stages.analysis import (
    Cause,
    analyse,
    ar_members,
    classify_strings,
    differing_bytes,
    strings_diff_count,
    strings_of,
)

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")

SOURCE = """\
#include <stdio.h>
static int square(int x) { return x * x; }
int table[64];
int main(int argc, char **argv) {
    for (int i = 0; i < 64; i++) table[i] = square(i + argc);
    printf("%s built %s %s: %d\\n", argv[0], STAMP, __FILE__, table[7]);
    return 0;
}
"""


def build(
    directory: Path, *flags: str, stamp: str = '"x"', env: dict | None = None, name: str = "prog"
) -> bytes:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prog.c").write_text(SOURCE)
    subprocess.run(
        ["gcc", *flags, f"-DSTAMP={stamp}", "prog.c", "-o", name],
        cwd=directory,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return (directory / name).read_bytes()


def test_same_file_compiled_twice_is_identical(tmp_path):
    assert build(tmp_path / "a", "-O2") == build(tmp_path / "a", "-O2", name="again")


def test_debug_info(tmp_path):
    result = analyse(build(tmp_path / "a", "-O2", "-g"), build(tmp_path / "a", "-O2"))
    assert result.cause is Cause.DEBUG_INFO, result.evidence
    assert result.survives_strip is False
    assert any(s.name.startswith(".debug") and s.right_size is None for s in result.sections)


def test_timestamp(tmp_path):
    stamp = '__DATE__ " " __TIME__'
    a = build(tmp_path / "a", "-O2", stamp=stamp, env={"SOURCE_DATE_EPOCH": "0"})
    b = build(tmp_path / "a", "-O2", stamp=stamp, env={"SOURCE_DATE_EPOCH": "1700000000"}, name="b")
    result = analyse(a, b)
    assert result.cause is Cause.TIMESTAMP, result.evidence
    assert any("Jan  1 1970" in e for e in result.evidence)
    assert any(s.name == ".rodata" for s in result.sections)
    assert result.survives_strip is True


def test_build_path(tmp_path):
    a = build(tmp_path / "first" / "dir", "-O2", "-g")
    b = build(tmp_path / "second" / "elsewhere", "-O2", "-g")
    result = analyse(a, b)
    assert result.cause is Cause.BUILD_PATH, result.evidence
    assert any("first/dir" in e for e in result.evidence)
    assert result.survives_strip is False, "the paths live in debug info only"


def test_code(tmp_path):
    result = analyse(build(tmp_path / "a", "-O0"), build(tmp_path / "a", "-O2", name="b"))
    assert result.cause is Cause.CODE, result.evidence
    assert result.sections[0].differing_bytes > 0
    assert ".text" in {s.name for s in result.sections}
    assert result.symbols and "main" in result.symbols["changed"]


def test_build_id(tmp_path):
    a = build(tmp_path / "a", "-O2", "-Wl,--build-id=0x0123456789abcdef")
    b = build(tmp_path / "a", "-O2", "-Wl,--build-id=0xfedcba9876543210", name="b")
    result = analyse(a, b)
    assert result.cause is Cause.BUILD_ID, result.evidence
    assert [s.name for s in result.sections] == [".note.gnu.build-id"]
    assert result.build_id == {"left": "0123456789abcdef", "right": "fedcba9876543210"}


def test_ordering(tmp_path):
    d = tmp_path / "o"
    d.mkdir()
    (d / "a.c").write_text("int fa(int x) { return x * 3 + 1; }\n")
    (d / "b.c").write_text("int fb(int x) { return x * 5 - 2; }\n")
    (d / "m.c").write_text("int fa(int), fb(int);\nint main(void) { return fa(1) + fb(2); }\n")
    subprocess.run(["gcc", "-c", "-O2", "a.c", "b.c", "m.c"], cwd=d, check=True)
    subprocess.run(["gcc", "m.o", "a.o", "b.o", "-o", "ab"], cwd=d, check=True)
    subprocess.run(["gcc", "m.o", "b.o", "a.o", "-o", "ba"], cwd=d, check=True)
    result = analyse((d / "ab").read_bytes(), (d / "ba").read_bytes())
    assert result.cause is Cause.ORDERING, result.evidence


def test_a_text_file_listing_a_directory_in_another_order(tmp_path):
    """``ls -f`` (readdir order) under disorderfs: the same lines, reordered."""
    names = [f"file{i}.c\n".encode() for i in range(20)]
    result = analyse(b"".join(names), b"".join(reversed(names)), "lib/order.txt")
    assert result.cause is Cause.ORDERING, result.evidence
    assert "the same 20 lines in another order" in result.evidence[0]
    other = analyse(b"a\nb\n", b"a\nc\n", "x.txt")  # not a reordering
    assert other.cause is Cause.UNKNOWN


def test_archives_are_compared_member_by_member(tmp_path):
    d = tmp_path / "ar"
    d.mkdir()
    (d / "one.c").write_text("int one(void) { return 1; }\n")
    (d / "two.c").write_text("int two(int x) { return x * 2; }\n")
    subprocess.run(["gcc", "-c", "-O0", "one.c", "two.c"], cwd=d, check=True)
    subprocess.run(["ar", "rcsD", "left.a", "one.o", "two.o"], cwd=d, check=True)
    subprocess.run(["gcc", "-c", "-O2", "two.c"], cwd=d, check=True)
    subprocess.run(["ar", "rcsD", "right.a", "one.o", "two.o"], cwd=d, check=True)
    left = (d / "left.a").read_bytes()
    assert [n for n, _ in ar_members(left)] == ["one.o", "two.o"]
    result = analyse(left, (d / "right.a").read_bytes())
    assert result.kind == "archive" and result.cause is Cause.CODE
    assert [m["name"] for m in result.members] == ["two.o"], "one.o is identical"


def test_other_files_show_offset_and_excerpt():
    result = analyse(b"line one\nline two\n", b"line one\nline 2\n")
    assert result.kind == "text" and result.first_difference == 14
    assert "-line two" in result.excerpt and "+line 2" in result.excerpt
    binary = analyse(b"\0\1\2\3\4", b"\0\1\x09\3\4")
    assert binary.kind == "data" and binary.first_difference == 2
    assert "09" in binary.excerpt[1]


def test_strings_helpers():
    assert strings_of(b"\0abc\0abcd\x01hello world\0") == ["abcd", "hello world"]
    assert strings_diff_count(b"same strings", b"same strings") == 0
    assert strings_diff_count(b"\0aaaa\0bbbb\0", b"\0aaaa\0cccc\0") == 4  # 2c2, <, ---, >
    assert differing_bytes(b"abcd", b"abXdef") == 3


def test_strings_that_differ_only_in_digits_are_generated_names():
    # Gauche's precompiled modules from two machines: the gensym counter had moved
    left = ["G3386", "G3387", "G3389", "%G3390-loop"]
    right = ["G2287", "G2288", "G2290", "%G2291-loop"]
    cause, evidence = classify_strings(left, right)
    assert cause is Cause.GENERATED_NAMES and evidence[0] == "G3386 / G2287"
    assert evidence[-1] == "4 string(s) differ only in their digits"
    # two compilers: thousands of strings differ, a few digit pairs are not the story
    other = [f"text{i}" for i in range(100)]
    assert classify_strings(left + other, right + [f"word{i}" for i in range(100)]) is None
    assert classify_strings(["abc"], ["abd"]) is None, "no digits, no generated name"
