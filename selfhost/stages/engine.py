"""The sandbox engine interface: one description of a sandbox, two backends.

A :class:`Sandbox` says *what* to run: the stack, the command, the environment, the
mounts, the working directory, limits. An :class:`Engine` says *how*: bubblewrap
(``selfhost.stages.bwrap``, the default, no daemon) or Docker
(``selfhost.stages.docker_engine``, through the docker SDK). Code that runs commands
takes the engine as a parameter, so the same step runs under either.

Both engines run exactly the same command inside the sandbox::

    /usr/bin/env -i K=V... /bin/sh -c 'umask 022 && exec "$@"' sh ARGV...

so the environment (nothing but the declared variables), the umask and the argv are
identical whichever engine runs them; the stack is read-only, the network is
unshared unless asked for, ``/tmp`` is a fresh tmpfs and the hostname is fixed.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from selfhost.errors import UsageError
from selfhost.stages.stack import Stack

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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
    limits: Limits = field(default_factory=Limits)
    owner: str = "selfhost"  # who started it (a workspace); labels containers and cgroups

    def inner_argv(self) -> list[str]:
        """The command both engines execute inside the sandbox (see module docstring)."""
        return ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in self.env),
                "/bin/sh", "-c", 'umask 022 && exec "$@"', "sh", *self.argv]

    def mount_targets(self) -> list[str]:
        return [m.target for m in self.mounts]


@dataclass(frozen=True)
class RunResult:
    """How a sandboxed command ended."""

    exit_code: int  # 128+N when killed by signal N
    seconds: float
    timed_out: bool = False


class Engine(Protocol):
    """What every sandbox backend provides."""

    name: str

    def check(self) -> None:
        """Raise EngineError (naming the fix) if the engine cannot run sandboxes."""

    def prepare(self, stack: Stack, mount_points: Iterable[str] = ()) -> None:
        """Make the stack usable by this engine (mount points, images)."""

    def run(self, sandbox: Sandbox, output: IO[bytes], *, timeout: float | None = None
            ) -> RunResult:
        """Run the sandbox to completion, writing its stdout and stderr to ``output``."""

    def command_line(self, sandbox: Sandbox) -> list[str]:
        """A shell command line that reproduces the sandbox by hand."""

    def remove_orphans(self, owner: str) -> int:
        """Remove sandboxes of ``owner`` left behind by a killed run; return how many."""


def make_engine(name: str, *, docker_url: str | None = None, echo=None) -> Engine:
    """Create the engine called ``name`` (``bwrap`` or ``docker``)."""
    if name == "bwrap":
        from selfhost.stages.bwrap import BwrapEngine

        return BwrapEngine(echo=echo)
    if name == "docker":
        from selfhost.stages.docker_engine import DockerEngine

        return DockerEngine(base_url=docker_url, echo=echo)
    raise UsageError(f"unknown engine {name!r}; expected bwrap or docker",
                     hint="pass --engine bwrap or --engine docker")


def shell_line(argv: Sequence[str]) -> str:
    """Quote an argv for copy-pasting into a shell."""
    return shlex.join(argv)


def output_fd(output: IO[bytes]) -> int | None:
    """The file descriptor behind ``output`` if it has one (a real file), else None."""
    try:
        fd = output.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    output.flush()
    return fd
