"""Integration fixtures: a real stack (built once per session), real CLI runs.

Set ``SELFHOST_TEST_STACKS`` to a directory to keep stacks between test sessions
(stacks are content-addressed, so reuse is safe); by default each session builds its
own with debootstrap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass
class Run:
    """A finished ``invoke`` run."""

    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke_env(workspace: Path, stacks: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(
        {
            "INVOKE_SELFHOST_WORKSPACE": str(workspace),
            "INVOKE_SELFHOST_STACKS_DIR": str(stacks),
            **extra,
        }
    )
    return env


def invoke(
    args: list[str], workspace: Path, stacks: Path, *, timeout: float = 1800, **extra: str
) -> Run:
    """Run ``invoke ARGS`` from the repository root, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=invoke_env(workspace, stacks, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def start_invoke(
    args: list[str], workspace: Path, stacks: Path, **extra: str
) -> subprocess.Popen[str]:
    """Start ``invoke ARGS`` in its own process group (so it can be signalled)."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=invoke_env(workspace, stacks, **extra),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stacks directory of the session; the tcc stack is built once, here."""
    if not shutil.which("bwrap") or not shutil.which("debootstrap"):
        pytest.fail("integration tests need bubblewrap and debootstrap: run ./setup --dev")
    keep = os.environ.get("SELFHOST_TEST_STACKS")
    path = Path(keep) if keep else tmp_path_factory.mktemp("stacks")
    run = invoke(["stack", "--json"], tmp_path_factory.mktemp("stack-ws"), path)
    assert run.code == 0, run.output
    return path


@pytest.fixture(scope="session")
def tcc_run(stacks: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """One full tcc bootstrap with bwrap, shared by the tests that inspect it."""
    workspace = tmp_path_factory.mktemp("tcc-ws")
    run = invoke(["bootstrap", "--json"], workspace, stacks)
    assert run.code == 0, run.output
    return workspace, run


@pytest.fixture(scope="session")
def tcc_slug(tcc_run, stacks):
    """The tcc slug built once in the session's tcc workspace."""
    run = invoke(["slug", "--json"], tcc_run[0], stacks)
    assert run.code == 0, run.output
    return tcc_run[0], run.json


@pytest.fixture
def workspace(tmp_path: Path, tcc_run: tuple[Path, Run]) -> Iterator[Path]:
    """A fresh workspace whose source store is seeded from the session's (no refetch)."""
    ws = tmp_path / "ws"
    (ws / "sources").mkdir(parents=True)
    shutil.copytree(tcc_run[0] / "sources" / "trees", ws / "sources" / "trees", symlinks=True)
    yield ws


def tcc_variant(tmp_path: Path, **replacements: str) -> Path:
    """A copy of the tcc recipe with some lines replaced, for failure tests."""
    text = (REPO / "selfhost/compilers/recipes/tcc.toml").read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "tcc-variant.toml"
    path.write_text(text)
    return path
