"""Where a stage's steps run (see :mod:`selfhost.stages.builder`).

- :class:`SandboxRunner`: each step in a fresh sandbox of the stack, as the unprivileged
  build id (``invoke bootstrap``): the work directory at ``/build``, DESTDIR at
  ``/build/out`` (read-only for the test step), the builder read-only at ``$PREFIX``;
- :class:`DynoRunner`: each step as a process group of the dyno it runs in (compile
  workers, ``bin/rebuild``): the dyno is already the sandbox, ``/build`` is its scratch
  space, and the builder is put at ``$PREFIX`` (under ``/app``) for the time of the
  build.

This module imports nothing heavy: worker dynos run :class:`DynoRunner` on the
stack's own Python.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from selfhost.stages.builder import BUILD, DESTDIR, StepResult, Work

if TYPE_CHECKING:
    from selfhost.stages.engine import Engine, Mount, Sandbox
    from selfhost.stages.stack import Stack


class SandboxRunner:
    """Steps in sandboxes of a stack, by an engine (bwrap or Docker).

    The attributes after the builder are the environment's knobs, left at the layout
    every bootstrap uses; ``invoke verify`` (:mod:`selfhost.stages.verify`) turns them
    one at a time to show what a build depends on."""

    name = "sandbox"
    seals_out = True  # the test step sees DESTDIR read-only

    def __init__(self, engine: Engine, stack: Stack, owner: str):
        from selfhost.stages.engine import HOSTNAME

        self.engine = engine
        self.stack = stack
        self.owner = owner
        self.builder: tuple[Path, str] | None = None
        self.root = BUILD  # where the work directory is mounted
        self.root_view: Path | None = None  # what is mounted there instead of work.root
        self.mounts: tuple[Mount, ...] = ()  # more read-only mounts
        self.uid = 0  # the user and group ids inside (bwrap)
        self.hostname = HOSTNAME
        self.umask = "022"

    def prepare(self, work: Work, builder_tree: Path | None, prefix: str) -> None:
        from selfhost.stages.security import hand_over

        if builder_tree is not None:
            if not builder_tree.is_dir():
                raise FileNotFoundError(builder_tree)
            self.builder = (builder_tree, prefix)
        security = self.engine.security
        hand_over(security, security.ids.build, work.root, work.out)

    def sandbox(
        self, script: str, cwd: str, env: dict[str, str], work: Work, out_writable: bool
    ) -> Sandbox:
        from selfhost.stages.engine import Mount, Sandbox

        mounts = [
            Mount(self.root_view or work.root, self.root, writable=True),
            Mount(work.out, self.root + DESTDIR[len(BUILD) :], writable=out_writable),
        ]
        if self.builder is not None:
            mounts.append(Mount(self.builder[0], self.builder[1]))
        if cwd == BUILD or cwd.startswith(BUILD + "/"):
            cwd = self.root + cwd[len(BUILD) :]
        return Sandbox(
            stack=self.stack,
            argv=("/bin/sh", "-ec", f"umask {self.umask}; {script}"),
            env=tuple(env.items()),
            mounts=(*mounts, *self.mounts),
            workdir=cwd,
            owner=self.owner,
            host_id=self.engine.security.ids.build,
            uid=self.uid,
            hostname=self.hostname,
        )

    def run(
        self,
        step: str,
        script: str,
        cwd: str,
        env: dict[str, str],
        work: Work,
        log: IO[bytes],
        *,
        out_writable: bool,
        timeout: float | None,
    ) -> StepResult:
        result = self.engine.run(
            self.sandbox(script, cwd, env, work, out_writable), log, timeout=timeout
        )
        return StepResult(result.exit_code, result.seconds, result.timed_out)

    def reproduce(
        self, script: str, cwd: str, env: dict[str, str], work: Work, out_writable: bool
    ) -> str | None:
        from selfhost.stages.engine import shell_line

        return shell_line(
            self.engine.command_line(self.sandbox(script, cwd, env, work, out_writable))
        )

    def finish(self, work: Work) -> None:
        from selfhost.stages.security import take_back

        take_back(self.engine.security, work.out)


class DynoRunner:
    """Steps as process groups of this dyno, which is the sandbox already."""

    name = "dyno"
    seals_out = False  # DESTDIR is checked unchanged after the test step instead

    def __init__(
        self,
        *,
        echo: Callable[[str], None] = lambda _: None,
        started: Callable[[subprocess.Popen[bytes] | None], None] = lambda _: None,
    ):
        self.echo = echo  # each output line (a worker sends them to the job's log)
        self.started = started  # the running step's process (None when it ended)
        self.restore: Callable[[], None] = lambda: None

    def prepare(self, work: Work, builder_tree: Path | None, prefix: str) -> None:
        """Put the builder at the prefix, unless it is there already (the slug's own)."""
        if builder_tree is None or builder_tree.resolve() == Path(prefix).resolve():
            return
        self.restore = swap_in(Path(prefix), builder_tree)

    def run(
        self,
        step: str,
        script: str,
        cwd: str,
        env: dict[str, str],
        work: Work,
        log: IO[bytes],
        *,
        out_writable: bool,
        timeout: float | None,
    ) -> StepResult:
        started = time.monotonic()
        # umask 022, as in a sandbox: modes are part of a tree's digest
        proc = subprocess.Popen(
            ["/bin/sh", "-ec", f"umask 022\n{script}"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started(proc)
        assert proc.stdout is not None
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            kill_group(proc)

        timer = threading.Timer(timeout, expire) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            for raw in proc.stdout:
                log.write(raw)
                self.echo(raw.decode("utf-8", "replace").rstrip("\n"))
            code = proc.wait()
        finally:
            if timer:
                timer.cancel()
            self.started(None)
        return StepResult(
            128 - code if code < 0 else code, time.monotonic() - started, expired.is_set()
        )

    def reproduce(
        self, script: str, cwd: str, env: dict[str, str], work: Work, out_writable: bool
    ) -> str | None:
        return None  # the worker's log has the step; the dyno is gone afterwards

    def finish(self, work: Work) -> None:
        self.restore()
        self.restore = lambda: None


def swap_in(prefix: Path, tree: Path) -> Callable[[], None]:
    """Put ``tree`` at ``prefix`` (stages are built at the same path); return the
    function that puts what was there back."""
    keep = prefix.with_name(f".{prefix.name}.kept")
    if keep.exists():  # left by a job killed mid-swap
        shutil.rmtree(prefix, ignore_errors=True)
    elif prefix.exists():  # a rename, or a copy where the overlay refuses to rename
        shutil.move(str(prefix), keep)
    shutil.copytree(tree, prefix, symlinks=True)

    def restore() -> None:
        shutil.rmtree(prefix, ignore_errors=True)
        if keep.exists():
            shutil.move(str(keep), prefix)

    return restore


def kill_group(proc: subprocess.Popen[bytes], grace: float = 1.0) -> None:
    """SIGTERM to a step's whole process group, SIGKILL to what is left after ``grace``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
