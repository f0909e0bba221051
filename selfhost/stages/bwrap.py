"""The bubblewrap engine: the default, needs no daemon, starts in milliseconds.

The stack's rootfs is bound read-only at ``/``; each :class:`Mount` is bound on top
(read-only unless writable); ``/proc``, ``/dev`` and a tmpfs ``/tmp`` are fresh; every
namespace is unshared (so there is no network unless the sandbox asks for it); and
the sandbox dies with its parent, so a killed selfhost leaves no build behind.
Resource limits are enforced with a cgroup per sandbox (:mod:`selfhost.stages.cgroups`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from selfhost.errors import EngineError
from selfhost.stages.cgroups import Cgroup, command_name, descendants
from selfhost.stages.engine import HOSTNAME, Output, RunResult, Sandbox, output_fd, run_sandbox
from selfhost.stages.stack import Stack


class BwrapEngine:
    """Runs sandboxes with ``bwrap``."""

    name = "bwrap"

    def __init__(self, *, echo: Callable[[Sequence[str]], None] | None = None):
        self._echo = echo or (lambda argv: None)
        self._bwrap: str | None = None

    @property
    def bwrap(self) -> str:
        if self._bwrap is None:
            self.check()
        assert self._bwrap is not None
        return self._bwrap

    def check(self) -> None:
        """Fail with the fix if bubblewrap is not installed."""
        found = shutil.which("bwrap")
        if not found:
            raise EngineError(
                "bubblewrap (bwrap) is not installed",
                hint="apt-get install bubblewrap, or use --engine docker",
            )
        self._bwrap = found

    def prepare(self, stack: Stack, mount_points: Iterable[str] = ()) -> None:
        """bwrap cannot create mount points in a read-only root: make them in the stack."""
        stack.ensure_mount_points(mount_points)

    def remove_orphans(self, owner: str) -> int:
        """Nothing to do: ``--die-with-parent`` takes sandboxes down with their run."""
        return 0

    def command_line(self, sandbox: Sandbox) -> list[str]:
        """The full bwrap argv, one option per group, as run."""
        argv = [
            self.bwrap,
            "--ro-bind",
            str(sandbox.stack.rootfs),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        for scratch in sandbox.scratch:
            argv += ["--tmpfs", scratch]
        for mount in sandbox.mounts:
            argv += ["--bind" if mount.writable else "--ro-bind", str(mount.source), mount.target]
        argv += ["--unshare-all"]
        if sandbox.network:
            argv += ["--share-net"]
        if sandbox.uid:
            argv += ["--uid", str(sandbox.uid), "--gid", str(sandbox.uid)]
        argv += [
            "--hostname",
            HOSTNAME,
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--chdir",
            sandbox.workdir,
            "--",
            *sandbox.inner_argv(),
        ]
        return argv

    def start(self, sandbox: Sandbox, output: Output) -> BwrapProcess:
        """Start bwrap in its own process group (and cgroup, when limits are set)."""
        self.prepare(sandbox.stack, [*sandbox.mount_targets(), *sandbox.scratch])
        argv = self.command_line(sandbox)
        self._echo(argv)
        limits = sandbox.limits
        cgroup = None
        if limits.memory_bytes or limits.cpus or limits.pids:
            cgroup = Cgroup.create(
                sandbox.label or f"run-{os.getpid()}-{time.monotonic_ns()}",
                memory_bytes=limits.memory_bytes,
                cpus=limits.cpus,
                pids=limits.pids,
            )
            argv = cgroup.wrap(argv)
        fd = output_fd(output)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd if fd is not None else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our own process group, killed as one
            )
        except OSError as exc:
            if cgroup:
                cgroup.remove()
            raise EngineError(f"cannot start bwrap: {exc}") from None
        pump = None
        if fd is None:
            pump = threading.Thread(target=_copy, args=(proc.stdout, output), daemon=True)
            pump.start()
        return BwrapProcess(proc, pump, cgroup)

    def run(self, sandbox: Sandbox, output: Output, *, timeout: float | None = None) -> RunResult:
        """Run to completion; on timeout or Ctrl-C the whole sandbox is killed."""
        return run_sandbox(self, sandbox, output, timeout=timeout)


class BwrapProcess:
    """A running bwrap sandbox."""

    def __init__(
        self, proc: subprocess.Popen[bytes], pump: threading.Thread | None, cgroup: Cgroup | None
    ):
        self.proc = proc
        self.pid = proc.pid
        self.pump = pump
        self.cgroup = cgroup

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self.pump:
            self.pump.join()
        return _exit_code(code)

    def terminate(self) -> None:
        """SIGTERM to the processes inside the sandbox, not to bwrap: bwrap would die at
        once and take the sandbox down with SIGKILL (--die-with-parent), leaving the
        command no time to shut down."""
        for pid in descendants(self.proc.pid):
            if command_name(pid) != "bwrap":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> dict[str, Any]:
        if self.cgroup is None:
            return {}
        facts = self.cgroup.facts()
        self.cgroup.remove()
        return facts


def _copy(src: IO[bytes] | None, dst: Output) -> None:
    assert src is not None
    while chunk := src.read1(65536) if hasattr(src, "read1") else src.read(65536):
        dst.write(chunk)
        dst.flush()


def _exit_code(code: int) -> int:
    """Popen reports death by signal N as -N; shells and Docker report 128+N."""
    return 128 - code if code < 0 else code
