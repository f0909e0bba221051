"""The bubblewrap engine: the default, needs no daemon, starts in milliseconds.

The stack's rootfs is bound read-only at ``/``; each :class:`Mount` is bound on top
(read-only unless writable); ``/proc``, ``/dev`` and a tmpfs ``/tmp`` are fresh; every
namespace is unshared (so there is no network unless the sandbox is given one); and
the sandbox dies with its parent, so a killed selfhost leaves no build behind.

bubblewrap is started as the sandbox's unprivileged host id, as Flatpak starts it::

    [sh: join the cgroup] → setpriv --reuid=ID --regid=ID --clear-groups
        --inh-caps=-all --bounding-set=-all --no-new-privs
        → bwrap --unshare-all --unshare-user --uid 0 --disable-userns --cap-drop ALL
              --seccomp FD ...

or, for a dyno with its own network namespace, ``nsenter --net=FD --setuid=ID
--setgid=ID`` instead of setpriv (bwrap itself sets no_new_privs and empties the
bounding set before the command runs).

bwrap reads its options from a memfd (``--args FD``), so the environment it sets
(config vars, a dyno's token) is not in any host process's command line. The sandbox's
uid 0 is that host id, with no capability in any namespace that
matters, no way to create user namespaces, and the seccomp filter of
:mod:`selfhost.stages.security`. bwrap resolves mount sources as that id, so root
stages them first where only it may reach them (:mod:`selfhost.stages.staging`).
Resource limits are a cgroup per sandbox, created and joined from outside
(:mod:`selfhost.stages.cgroups`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shlex
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from selfhost.errors import EngineError
from selfhost.stages import staging
from selfhost.stages.cgroups import Cgroup, command_name, descendants
from selfhost.stages.engine import Output, RunResult, Sandbox, output_fd, run_sandbox
from selfhost.stages.security import Security
from selfhost.stages.stack import Stack
from selfhost.stages.staging import Staging

SETPRIV = "/usr/bin/setpriv"
UMASK = 0o022  # every sandboxed command starts with it (modes are part of a digest)
NSENTER = "/usr/bin/nsenter"


class BwrapEngine:
    """Runs sandboxes with ``bwrap``."""

    name = "bwrap"

    def __init__(self, security: Security, *, echo: Callable[[Sequence[str]], None] | None = None):
        self.security = security
        self._echo = echo or (lambda argv: None)
        self._bwrap: str | None = None

    @property
    def bwrap(self) -> str:
        if self._bwrap is None:
            self.check()
        assert self._bwrap is not None
        return self._bwrap

    def check(self) -> None:
        """Fail with the fix if bubblewrap (or setpriv, to drop privileges) is missing."""
        found = shutil.which("bwrap")
        if not found:
            raise EngineError(
                "bubblewrap (bwrap) is not installed",
                hint="apt-get install bubblewrap, or use --engine docker",
            )
        if self.security.drops_privileges and not os.path.exists(SETPRIV):
            raise EngineError(
                f"{SETPRIV} is missing: sandboxes cannot drop root",
                hint="apt-get install util-linux",
            )
        self._bwrap = found

    def prepare(self, stack: Stack, mount_points: Iterable[str] = ()) -> None:
        """bwrap cannot create mount points in a read-only root: make them in the stack."""
        stack.ensure_mount_points(mount_points)

    def remove_orphans(self, owner: str) -> int:
        """Nothing to do: ``--die-with-parent`` takes sandboxes down with their run."""
        return 0

    def bwrap_argv(
        self, sandbox: Sandbox, seccomp_fd: int | None, staged: Mapping[Path, Path] | None = None
    ) -> list[str]:
        """The bwrap part of the command, one option per group. bwrap runs as the host
        id, so it binds each source from where root staged it (:mod:`.staging`)."""

        def source(path: Path) -> str:
            return str(staged[path] if staged else path)

        argv = [
            self.bwrap,
            "--ro-bind",
            source(sandbox.stack.rootfs),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        for scratch in sandbox.scratch:
            argv += ["--tmpfs", scratch]
        for mount in sandbox.mounts:
            argv += [
                "--bind" if mount.writable else "--ro-bind",
                source(mount.source),
                mount.target,
            ]
        argv += ["--unshare-all"]
        if sandbox.netns is not None or (sandbox.network and not self.security.hardened):
            argv += ["--share-net"]  # the prepared namespace, or the host's (weakened)
        if self.security.hardened:
            argv += [
                "--unshare-user",
                "--uid",
                str(sandbox.uid),
                "--gid",
                str(sandbox.uid),
                "--disable-userns",
                "--cap-drop",
                "ALL",
            ]
            if seccomp_fd is not None:
                argv += ["--seccomp", str(seccomp_fd)]
        elif sandbox.uid:
            argv += ["--uid", str(sandbox.uid), "--gid", str(sandbox.uid)]
        argv += [
            "--hostname",
            sandbox.hostname,
            "--die-with-parent",
            "--new-session",
            "--clearenv",  # nothing but the declared variables, as env -i in Docker
        ]
        for key, value in sandbox.env:
            argv += ["--setenv", key, value]
        argv += ["--chdir", sandbox.workdir, "--", *sandbox.argv]
        return argv

    def launch_argv(
        self, sandbox: Sandbox, seccomp_fd: int | None, staged: Mapping[Path, Path] | None = None
    ) -> list[str]:
        """What runs bwrap: into the network namespace, then down to the host id.

        With a namespace to enter, nsenter also drops to the host id (setgroups(0),
        setgid, setuid: no capability is left); bwrap sets no_new_privs and empties
        the bounding set before the command runs. That is one program fewer on a
        dyno's start than nsenter followed by setpriv."""
        host = self.security.host_id(sandbox.host_id)
        argv: list[str] = []
        if sandbox.netns is not None:
            argv += [NSENTER, f"--net=/proc/self/fd/{sandbox.netns}"]
            if self.security.drops_privileges:
                argv += [f"--setuid={host}", f"--setgid={host}"]
            argv += ["--"]
        elif self.security.drops_privileges:
            argv += [
                SETPRIV,
                f"--reuid={host}",
                f"--regid={host}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        return [*argv, *self.bwrap_argv(sandbox, seccomp_fd, staged)]

    def command_line(self, sandbox: Sandbox) -> list[str]:
        """A command that reproduces the sandbox by hand (as root), as it is run: the
        seccomp filter opened, the mount sources staged in a private mount namespace
        (gone when the command ends), then the same setpriv and bwrap."""
        seccomp = self.security.seccomp if self.security.hardened else None
        umask = f"umask {UMASK:03o}"
        if seccomp is None:
            return ["bash", "-c", f'{umask} && exec "$@"', "sh", *self.launch_argv(sandbox, None)]
        fd = 9
        prelude = [umask, f"exec {fd}<{shlex.quote(str(seccomp))}"]
        staged: dict[Path, Path] | None = None
        if self.security.drops_privileges:
            root = staging.ROOT / "repro"
            staged = {}
            prelude += [
                f"mount -t tmpfs -o mode=0711 repro {staging.ROOT}",
                f"mkdir -m 0700 {root}",
            ]
            for k, source in enumerate(
                dict.fromkeys([sandbox.stack.rootfs, *(m.source for m in sandbox.mounts)])
            ):
                staged[source] = root / str(k)
                prelude += [
                    f"mkdir {staged[source]}",
                    f"mount --rbind {shlex.quote(str(source))} {staged[source]}",
                ]
            host = self.security.host_id(sandbox.host_id)
            prelude.append(f"chown {host}:{host} {root}")
        launch = self.launch_argv(sandbox, fd, staged)
        script = " && ".join([*prelude, 'exec "$@"'])
        if staged is None:
            return ["bash", "-c", script, "sh", *launch]
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            f"mkdir -p {staging.ROOT} && {script}",
            "sh",
            *launch,
        ]

    def start(self, sandbox: Sandbox, output: Output) -> BwrapProcess:
        """Start bwrap in its own process group (and cgroup, when limits are set)."""
        self.prepare(sandbox.stack, [*sandbox.mount_targets(), *sandbox.scratch])
        limits = sandbox.limits
        cgroup = None
        if limits.memory_bytes or limits.cpus or limits.pids:
            cgroup = Cgroup.create(
                sandbox.label or f"run-{os.getpid()}-{time.monotonic_ns()}",
                memory_bytes=limits.memory_bytes,
                cpus=limits.cpus,
                pids=limits.pids,
            )
        fds: list[int] = [] if sandbox.netns is None else [sandbox.netns]
        staged = None
        if self.security.drops_privileges:
            try:
                staged = Staging.create(
                    [sandbox.stack.rootfs, *(m.source for m in sandbox.mounts)],
                    self.security.host_id(sandbox.host_id),
                )
            except BaseException:
                if cgroup:
                    cgroup.remove()
                raise
        seccomp_fd = None
        if self.security.hardened and self.security.seccomp is not None:
            seccomp_fd = os.open(self.security.seccomp, os.O_RDONLY)
            fds.append(seccomp_fd)
        argv = self.launch_argv(sandbox, seccomp_fd, staged.paths if staged else None)
        self._echo(self.command_line(sandbox))  # what a human can run again
        # bwrap reads its options from a memfd: the environment (config vars, the
        # dyno's token) never shows in the host's process list, where bwrap stays
        # for the sandbox's whole life
        # (the options only: bwrap takes the command from its real argv).
        at, command = argv.index(self.bwrap), len(argv) - len(sandbox.argv) - 1
        assert argv[command] == "--"
        args_fd = _args_memfd(argv[at + 1 : command])
        fds.append(args_fd)
        argv = [*argv[: at + 1], "--args", str(args_fd), *argv[command:]]
        if cgroup:
            argv = cgroup.wrap(argv)
        if sandbox.keeper:
            argv = keeper_argv(sandbox.keeper, argv)
        fd = output_fd(output)
        master = terminal = None
        if sandbox.tty is not None:
            master, terminal = _pseudo_terminal(*sandbox.tty)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=terminal
                if terminal is not None
                else subprocess.PIPE
                if sandbox.stdin
                else subprocess.DEVNULL,
                stdout=terminal
                if terminal is not None
                else fd
                if fd is not None
                else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=fds,
                start_new_session=True,  # our own process group, killed as one
                umask=UMASK,  # bwrap hands it on to the command
            )
        except OSError as exc:
            if master is not None:
                os.close(master)
            if cgroup:
                cgroup.remove()
            if staged:
                staged.remove()
            raise EngineError(f"cannot start bwrap: {exc}") from None
        finally:
            os.close(args_fd)
            if seccomp_fd is not None:
                os.close(seccomp_fd)
            if terminal is not None:
                os.close(terminal)  # the sandbox holds it now
        pump = None
        if master is not None:
            pump = threading.Thread(target=_copy_terminal, args=(master, output), daemon=True)
            pump.start()
        elif fd is None:
            pump = threading.Thread(target=_copy, args=(proc.stdout, output), daemon=True)
            pump.start()
        process = BwrapProcess(proc, pump, cgroup, staged, keeper=sandbox.keeper)
        if master is not None:
            process.stdin = os.fdopen(os.dup(master), "wb", buffering=0)
        return process

    def run(self, sandbox: Sandbox, output: Output, *, timeout: float | None = None) -> RunResult:
        """Run to completion; on timeout or Ctrl-C the whole sandbox is killed."""
        return run_sandbox(self, sandbox, output, timeout=timeout)

    def adopt(self, record: dict[str, Any]) -> AdoptedProcess | None:
        """Take over a sandbox started with a keeper by another process (a daemon that
        was killed), from :meth:`BwrapProcess.record`; None if it has ended."""
        return AdoptedProcess.from_record(record)


class BwrapProcess:
    """A running bwrap sandbox."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        pump: threading.Thread | None,
        cgroup: Cgroup | None,
        staged: Staging | None = None,
        keeper: str | None = None,
    ):
        self.proc = proc
        self.pid = proc.pid
        self.stdin = proc.stdin
        self.pump = pump
        self.cgroup = cgroup
        self.staged = staged
        self.keeper = keeper

    def record(self) -> dict[str, Any]:
        """What another process needs to take this sandbox over (:meth:`BwrapEngine.adopt`)."""
        return {
            "pid": self.pid,
            "keeper": self.keeper,
            "cgroup": None
            if self.cgroup is None
            else {
                "name": self.cgroup.name,
                "dirs": {k: str(v) for k, v in self.cgroup.dirs.items()},
                "v": self.cgroup.v,
            },
            "staged": None
            if self.staged is None
            else {
                "directory": str(self.staged.directory),
                "paths": {str(k): str(v) for k, v in self.staged.paths.items()},
            },
        }

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self.pump:
            self.pump.join()
        return _exit_code(code)

    def terminate(self) -> bool:
        return _terminate_below(self.proc.pid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def namespace_pid(self) -> int:
        """A process in the sandbox's network namespace for as long as the sandbox runs:
        bwrap itself (the cgroup shell and nsenter exec it, under the same pid; until
        they have, the pid is still in the host's namespace: compare namespaces)."""
        return _below_keeper(self.proc.pid) if self.keeper else self.proc.pid

    def close(self) -> dict[str, Any]:
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                self.stdin.close()
        return _release(self)


def _terminate_below(pid: int) -> bool:
    """SIGTERM to the processes inside a sandbox, not to bwrap: bwrap would die at once
    and take the sandbox down with SIGKILL (--die-with-parent), leaving the command no
    time to shut down. False when there was none yet (bwrap has not started the
    command): the caller asks again."""
    sent = False
    for child in descendants(pid):
        if command_name(child) != "bwrap":
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
                sent = True
    return sent


def _release(process: BwrapProcess | AdoptedProcess) -> dict[str, Any]:
    """Unstage a sandbox's sources and remove its cgroup; what the cgroup recorded."""
    if process.staged is not None:
        process.staged.remove()
        process.staged = None
    if process.cgroup is None:
        return {}
    facts = process.cgroup.facts()
    process.cgroup.remove()
    return facts


def _args_memfd(args: Sequence[str]) -> int:
    """A memfd holding ``args`` NUL-separated, for ``bwrap --args FD``."""
    fd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
    try:
        os.write(fd, b"".join(a.encode() + b"\0" for a in args))
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pseudo_terminal(columns: int, lines: int) -> tuple[int, int]:
    """A new pseudo-terminal of that size: ``(master, the terminal)``."""
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    os.set_inheritable(master, False)
    return master, terminal


def _copy_terminal(master: int, dst: Output) -> None:
    """What the sandbox writes to its terminal, until every process in it has closed
    it (Linux then answers EIO); the master is closed afterwards."""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            dst.write(chunk)
            dst.flush()
    finally:
        os.close(master)


def _copy(src: IO[bytes] | None, dst: Output) -> None:
    assert src is not None
    while chunk := src.read1(65536) if hasattr(src, "read1") else src.read(65536):
        dst.write(chunk)
        dst.flush()


def _exit_code(code: int) -> int:
    """Popen reports death by signal N as -N; shells and Docker report 128+N."""
    return 128 - code if code < 0 else code


# --------------------------------------------------------------------------- keepers

#: The keeper: the parent of a sandbox that must outlive its starter. It waits for it
#: and writes its exit status (128+N for a signal) to a file, atomically.
_KEEPER = '"$@"; code=$?; echo $code > "$0.tmp" && mv -f "$0.tmp" "$0"; exit $code'


def keeper_argv(status_file: str, argv: list[str]) -> list[str]:
    return ["/bin/sh", "-c", _KEEPER, status_file, *argv]


def keeper_alive(record: dict[str, Any]) -> bool:
    """Whether the keeper of a recorded sandbox still runs (and is that keeper)."""
    process = AdoptedProcess.from_record(record)
    if process is None:
        return False
    try:
        return not select.select([process.pidfd], [], [], 0)[0]  # readable: it exited
    finally:
        os.close(process.pidfd)


def _below_keeper(pid: int, wait: float = 2.0) -> int:
    """The keeper's child (bwrap, once exec'd). The keeper forks it at once, but a
    caller may ask first: returning the keeper then (in the host's namespace for good)
    left a router probing the wrong process and a healthy dyno never routable. So wait
    for the child, a bounded time; the keeper itself only if it never forks (it ended)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
                children = f.read().split()
        except OSError:
            return pid
        if children:
            return int(children[0])
        if time.monotonic() > deadline:
            return pid
        time.sleep(0.002)


class AdoptedProcess:
    """A sandbox started with a keeper by a process that is gone, taken over."""

    def __init__(
        self, pid: int, pidfd: int, status: Path, cgroup: Cgroup | None, staged: Staging | None
    ):
        self.pid = pid
        self.pidfd = pidfd
        self.status = status
        self.cgroup = cgroup
        self.staged = staged
        self.stdin: IO[bytes] | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AdoptedProcess | None:
        pid, keeper = int(record["pid"]), record.get("keeper")
        if not keeper:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        try:  # the pid is the keeper of this sandbox, not a process that took the number
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            cmdline = []
        if cmdline[3:4] != [keeper.encode()]:
            os.close(pidfd)
            return None
        cg = record.get("cgroup")
        cgroup = (
            Cgroup(cg["name"], {k: Path(v) for k, v in cg["dirs"].items()}, int(cg["v"]))
            if cg
            else None
        )
        st = record.get("staged")
        staged = (
            Staging(Path(st["directory"]), {Path(k): Path(v) for k, v in st["paths"].items()})
            if st
            else None
        )
        return cls(pid, pidfd, Path(keeper), cgroup, staged)

    def wait(self, timeout: float | None = None) -> int | None:
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        if not ready:
            return None
        try:
            return int(self.status.read_text().strip())
        except (OSError, ValueError):
            return 137  # the keeper itself was killed: so was its sandbox

    def terminate(self) -> bool:
        return _terminate_below(self.pid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def namespace_pid(self) -> int:
        return _below_keeper(self.pid)

    def close(self) -> dict[str, Any]:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        return _release(self)
