"""Bad input gets a clear error and the README's exit code, never a traceback."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import invoke


def no_traceback(run) -> None:
    assert "Traceback" not in run.output, run.output


def test_a_setting_of_the_wrong_type_names_the_variable(tmp_path, stacks):
    run = invoke(["bootstrap"], tmp_path / "ws", stacks, INVOKE_SELFHOST_JOBS="many")
    assert run.code == 2, run.output
    no_traceback(run)
    assert "INVOKE_SELFHOST_JOBS='many': selfhost.jobs must be a whole number" in run.stderr
    lists = invoke(["stack"], tmp_path / "ws", stacks, INVOKE_SELFHOST_BASE_PACKAGES="gcc")
    assert lists.code == 2 and "must be a list" in lists.stderr, lists.output
    no_traceback(lists)


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """A real read-only file system (a tmpfs mounted ro) at ``path``."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_workspace_is_a_configuration_error(tmp_path, stacks):
    with read_only_dir(tmp_path / "ro") as ro:
        run = invoke(["bootstrap"], ro / "ws", stacks)
    assert run.code == 2, run.output
    no_traceback(run)
    assert f"cannot write {ro}/ws: Read-only file system" in run.stderr
    assert "selfhost.workspace must name a writable directory" in run.stderr


FIFO_BUILD = 'mkdir -p "$DESTDIR$PREFIX/bin" && mkfifo "$DESTDIR$PREFIX/bin/pipe"\n'


def test_a_fifo_in_the_output_tree_is_a_build_error(tmp_path, stacks, http_dir):
    www, base = http_dir
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("fifo-1/install.sh")
        info.size = len(FIFO_BUILD)
        tar.addfile(info, io.BytesIO(FIFO_BUILD.encode()))
    (www / "fifo.tar.gz").write_bytes(buf.getvalue())
    recipe = tmp_path / "fifo.toml"
    recipe.write_text(f"""\
name = "fifo"
version = "1"
prefix = "/opt/fifo"
builder = "true"
stages = 1

[[sources]]
kind = "tarball"
url = "{base}/fifo.tar.gz"
sha256 = "{hashlib.sha256(buf.getvalue()).hexdigest()}"

[stage0]
builder = "true"

[steps]
build = "true"
install = "sh install.sh # $DESTDIR"
""")
    run = invoke(["bootstrap", "--compiler", str(recipe)], tmp_path / "ws", stacks)
    assert run.code == 7, run.output
    no_traceback(run)
    assert "the install step left a FIFO (named pipe) at /build/out/opt/fifo/bin/pipe" in run.stderr
    assert not (tmp_path / "ws" / "cache" / "stages").exists() or not any(
        (tmp_path / "ws" / "cache" / "stages").iterdir()
    ), "nothing was recorded"


def test_diff_of_a_tree_with_a_fifo_is_a_usage_error(tmp_path, stacks):
    left, right = tmp_path / "l", tmp_path / "r"
    left.mkdir()
    right.mkdir()
    os.mkfifo(right / "pipe")
    run = invoke(
        ["diff-stages", "--left", str(left), "--right", str(right)], tmp_path / "ws", stacks
    )
    assert run.code == 2, run.output
    no_traceback(run)
    assert "pipe is a FIFO (named pipe)" in run.stderr
