"""The sandbox engine interface: one description of a sandbox, two backends.

A :class:`Sandbox` says *what* to run: the stack, the command, the environment, the
mounts, the working directory, limits. An :class:`Engine` says *how*: bubblewrap
(``selfhost.stages.bwrap``, the default, no daemon) or Docker
(``selfhost.stages.docker_engine``, through the docker SDK). Code that runs commands
takes the engine as a parameter, so the same step runs under either.

Both engines start the command with exactly the same environment (nothing but the
declared variables), umask (022) and argv. Docker runs::

    /usr/bin/env -i K=V... /bin/sh -c 'umask 022 && exec "$@"' sh ARGV...

bwrap sets them itself (``--clearenv``, ``--setenv``; the umask it inherits), which
saves two programs at every start. Whichever engine runs it, the stack is read-only,
the network is unshared unless asked for, ``/tmp`` is a fresh tmpfs and the hostname
is fixed.
Both run it as an unprivileged host id with no capabilities, no_new_privs and a
seccomp filter (:mod:`selfhost.stages.security`).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from selfhost.errors import UsageError
from selfhost.stages.security import Security
from selfhost.stages.stack import Stack

HOSTNAME = "selfhost"


@dataclass(frozen=True)
class Mount:
    """A host directory bound into the sandbox."""

    source: Path
    target: str
    writable: bool = False


@dataclass(frozen=True)
class Limits:
    """Resource limits enforced by the engine (cgroups for bwrap, the container's)."""

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True, kw_only=True)
class Sandbox:
    """Everything that defines one sandboxed command."""

    stack: Stack
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...] = ()
    workdir: str = "/"
    network: bool = False
    #: bwrap: an open file descriptor of the network namespace to run in (a dyno's,
    #: prepared with pasta); None with ``network`` means a namespace of its own
    #: without interfaces (hardened) or the host's network (the weakened sandbox).
    netns: int | None = None
    limits: Limits = field(default_factory=Limits)
    scratch: tuple[str, ...] = ("/tmp",)  # fresh tmpfs directories
    owner: str = "selfhost"  # who started it (a workspace); labels containers
    label: str = ""  # a unique name for this run (cgroup, container), if any
    hostname: str = HOSTNAME  # what uname -n says inside (invoke verify varies it)
    uid: int = 0  # the user (and group) the command runs as inside the sandbox (bwrap)
    #: The unprivileged host id the sandbox runs as (see selfhost.stages.security);
    #: files it writes on the host are owned by it.
    host_id: int = 0
    #: A pipe the caller writes (``Process.stdin``: an attached one-off dyno's
    #: terminal, bwrap only); else the command's stdin is /dev/null.
    stdin: bool = False
    #: ``(columns, lines)``: the command's stdin, stdout and stderr are a pseudo-terminal
    #: of its own, of that size (``heroku run bash`` from a terminal; bwrap only);
    #: ``Process.stdin`` writes to its master side. To make it the command's controlling
    #: terminal (Ctrl-C as SIGINT), start the command with ``setsid --ctty --wait``.
    tty: tuple[int, int] | None = None
    #: bwrap: a file the sandbox's exit status is written to. The sandbox then outlives
    #: the process that started it (a dyno, when the daemon is killed): a keeper shell
    #: is its parent, and ``BwrapEngine.adopt`` takes it over again.
    keeper: str | None = None

    def inner_argv(self) -> list[str]:
        """The command Docker executes inside the sandbox (see module docstring)."""
        return [
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in self.env),
            "/bin/sh",
            "-c",
            'umask 022 && exec "$@"',
            "sh",
            *self.argv,
        ]

    def mount_targets(self) -> list[str]:
        return [m.target for m in self.mounts]


@dataclass(frozen=True)
class RunResult:
    """How a sandboxed command ended."""

    exit_code: int  # 128+N when killed by signal N
    seconds: float
    timed_out: bool = False
    oom_killed: bool = False
    facts: dict[str, Any] = field(default_factory=dict)


class Output(Protocol):
    """Where a sandbox's stdout and stderr go: a file (passed to the process as is) or
    any object with ``write`` and ``flush`` (fed by a thread)."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class Process(Protocol):
    """A started sandbox."""

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code (128+N for signal N), or None if still running after timeout."""

    def terminate(self) -> bool:
        """Ask the command to stop (SIGTERM to the command, not to the sandbox); False
        when the sandbox has not started the command yet (ask again)."""

    def kill(self) -> None:
        """Kill everything in the sandbox at once."""

    def close(self) -> dict[str, Any]:
        """Release the sandbox's resources; return what is known (e.g. oom_killed)."""

    def namespace_pid(self) -> int:
        """A host pid inside the sandbox (to reach its namespaces from outside)."""

    @property
    def stdin(self) -> IO[bytes] | None:
        """The command's stdin, if the sandbox was started with ``stdin=True``."""


class Engine(Protocol):
    """What every sandbox backend provides."""

    name: str
    security: Security

    def check(self) -> None:
        """Raise EngineError (naming the fix) if the engine cannot run sandboxes."""

    def prepare(self, stack: Stack, mount_points: Iterable[str] = ()) -> None:
        """Make the stack usable by this engine (mount points, images)."""

    def start(self, sandbox: Sandbox, output: Output) -> Process:
        """Start the sandbox, its stdout and stderr going to ``output``."""

    def run(self, sandbox: Sandbox, output: Output, *, timeout: float | None = None) -> RunResult:
        """Run the sandbox to completion (see :func:`run_sandbox`)."""

    def command_line(self, sandbox: Sandbox) -> list[str]:
        """A shell command line that reproduces the sandbox by hand."""

    def remove_orphans(self, owner: str) -> int:
        """Remove sandboxes of ``owner`` left behind by a killed run; return how many."""


def make_engine(
    name: str,
    security: Security,
    *,
    docker_url: str | None = None,
    echo: Callable[[Sequence[str]], None] | None = None,
) -> Engine:
    """Create the engine called ``name`` (``bwrap`` or ``docker``), locked down as
    ``security`` says."""
    if name == "bwrap":
        from selfhost.stages.bwrap import BwrapEngine

        return BwrapEngine(security, echo=echo)
    if name == "docker":
        from selfhost.stages.docker_engine import DockerEngine

        return DockerEngine(security, base_url=docker_url, echo=echo)
    raise UsageError(
        f"unknown engine {name!r}; expected bwrap or docker",
        hint="pass --engine bwrap or --engine docker",
    )


def run_sandbox(
    engine: Engine, sandbox: Sandbox, output: Output, *, timeout: float | None = None
) -> RunResult:
    """Start, wait, and on timeout or Ctrl-C kill the whole sandbox; always clean up."""
    started = time.monotonic()
    process = engine.start(sandbox, output)
    timed_out = False
    try:
        code = process.wait(timeout)
        if code is None:
            timed_out = True
            process.kill()
            code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        process.close()
        raise
    facts = process.close()
    assert code is not None
    return RunResult(
        code, time.monotonic() - started, timed_out, bool(facts.get("oom_killed")), facts
    )


def shell_line(argv: Sequence[str]) -> str:
    """Quote an argv for copy-pasting into a shell."""
    return shlex.join(argv)


def output_fd(output: Output) -> int | None:
    """The file descriptor behind ``output`` if it has one (a real file), else None."""
    try:
        fd = output.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    output.flush()
    return fd
