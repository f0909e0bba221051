"""The fixpoint policies on a toy compiler that converges at its third generation.

Each stage's "compiler" prints its generation; a stage built by generation g is
generation min(g + 1, 3). So stage1 != stage2 != stage3 == stage4.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from tests.integration.conftest import invoke

BUILD = """\
if [ -x "$PREFIX/bin/gen" ]; then g=$("$PREFIX/bin/gen"); else g=0; fi
n=$((g + 1)); [ "$n" -gt 3 ] && n=3
mkdir -p "$DESTDIR$PREFIX/bin"
printf '#!/bin/sh\\necho %s\\n' "$n" > "$DESTDIR$PREFIX/bin/gen"
chmod 755 "$DESTDIR$PREFIX/bin/gen"
"""


@pytest.fixture
def toy(tmp_path: Path, http_dir) -> callable:
    www, base = http_dir
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = BUILD.encode()
        info = tarfile.TarInfo("toy-1/build.sh")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (www / "toy.tar.gz").write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()

    def recipe(policy: str, stages: int) -> Path:
        path = tmp_path / f"toy-{policy}.toml"
        path.write_text(f"""\
name = "toy"
version = "1"
prefix = "/opt/toy"
builder = "$PREFIX/bin/gen"
stages = {stages}
fixpoint = "{policy}"
max_stages = 6

[[sources]]
kind = "tarball"
url = "{base}/toy.tar.gz"
sha256 = "{sha}"

[stage0]
builder = "true"

[steps]
build = "sh build.sh"
install = "test -d $DESTDIR"
""")
        return path

    return recipe


def test_fail_policy_exits_10_and_names_the_differences(toy, tmp_path, stacks):
    run = invoke(["bootstrap", "--compiler", str(toy("fail", 2))], tmp_path / "ws", stacks)
    assert run.code == 10, run.output
    assert "fixpoint not reached: stage1 and stage2 differ in 1 artifact(s)" in run.stderr
    assert "bin/gen" in run.stderr and "diff-stages" in run.stderr


def test_warn_policy_exits_0_with_a_warning(toy, tmp_path, stacks):
    run = invoke(
        ["bootstrap", "--compiler", str(toy("warn", 2)), "--json"], tmp_path / "ws", stacks
    )
    assert run.code == 0, run.output
    assert run.json["fixpoint"] is False and run.json["differences"] == ["bin/gen"]


def test_iterate_policy_builds_until_two_stages_agree(toy, tmp_path, stacks):
    run = invoke(
        ["bootstrap", "--compiler", str(toy("iterate", 2)), "--json"], tmp_path / "ws", stacks
    )
    assert run.code == 0, run.output
    result = run.json
    assert [s["stage"] for s in result["stages"]] == [1, 2, 3, 4]
    assert result["fixpoint"] is True and result["compared"] == [3, 4]
    # A fifth stage would be built by a tree identical to stage4's builder: same key.
    five = invoke(
        ["bootstrap", "--compiler", str(toy("iterate", 5)), "--json"], tmp_path / "ws", stacks
    )
    assert five.code == 0, five.output
    keys = [s["input_hash"] for s in five.json["stages"]]
    assert keys[4] == keys[3] and five.json["stages"][4]["cached"]
