"""Dynos: the current release's slug, run on its stack, in a fresh sandbox each time.

The platform daemon owns every dyno. A dyno is:

- the release's slug, unpacked once per slug and app into ``slugs/<sha256>-<id>/app``
  (checked entry by entry and bounded, see :mod:`selfhost.archive`), owned by the
  app's sandbox host id, under an overlay mount that is writable at ``/app`` and thrown
  away when the dyno ends;
- a per-dyno tmpfs (``dynos/<id>``, ``selfhost.dyno_disk_bytes``, ``nosuid,nodev``)
  that holds the overlay's upper layer, ``/tmp`` and ``/build``: what a dyno writes is
  bounded, counts against its memory, never carries a setuid bit to the host and is
  gone when it ends;
- a sandbox of the app's stack (the stack the slug was built on when the slug says so,
  else the base stack of the app's suite), by the daemon's engine, as the app's own
  unprivileged host id (:mod:`selfhost.stages.security`), with the size's memory, CPU
  and process limits set from outside;
- a network namespace of its own (:mod:`selfhost.platform.runtime.network`): ``$PORT`` in,
  the platform API, the app's peers and queue out, nothing else by default;
- the environment of a Heroku dyno: ``HOME=/app``, ``DYNO=<type>.<n>``, the release's
  config vars, ``PORT`` for web (and distccd) dynos, ``.profile.d/*.sh`` sourced first,
  and ``SELFHOST_API_URL`` with ``SELFHOST_API_TOKEN``, a token scoped to the app and
  revoked when the dyno ends (the platform's own token never enters a dyno).

Output goes to the app's log (``logs/<app>.log``, Heroku's line format) and, for an
attached one-off dyno, to the client as it is produced. The exit code is kept
(128+N for a signal N). Stopping is graceful: SIGTERM to the command, SIGKILL after the
grace period. ``time_to_live`` stops a one-off dyno when it expires. Whatever fails
while a dyno starts or runs, the dyno ends ``crashed`` with the reason, and everything
it held (mounts, namespace, token) is released.

The :class:`Supervisor` keeps each app's formation running from the current release:
it starts missing dynos, stops extra ones, replaces dynos of older releases or sizes,
and restarts crashed dynos with exponential backoff.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from selfhost.archive import Limits as ArchiveLimits
from selfhost.errors import EngineError, SelfhostError
from selfhost.platform.errors import Refused, invalid, not_found
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.runtime import probe
from selfhost.platform.runtime.network import Namespace, Networks, Policy
from selfhost.platform.slugs.slug import unpack
from selfhost.platform.store.db import Store, now
from selfhost.stages import security, staging
from selfhost.stages.engine import Engine, Limits, Mount, Process, Sandbox, make_engine
from selfhost.stages.manifest import write_json_atomic
from selfhost.stages.security import SandboxIds, hand_over, hand_over_new
from selfhost.stages.stack import Stack, StackSpec, StackStore
from selfhost.syscalls import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    MNT_DETACH,
    MS_NODEV,
    MS_NOSUID,
    libc,
)

if TYPE_CHECKING:
    from selfhost.config import Settings

MiB = 1 << 20
#: Heroku's dyno sizes, mapped to limits the engine enforces.
SIZES: dict[str, Limits] = {
    "basic": Limits(memory_bytes=512 * MiB, cpus=0.5, pids=512),
    "standard-1x": Limits(memory_bytes=512 * MiB, cpus=1.0, pids=512),
    "standard-2x": Limits(memory_bytes=1024 * MiB, cpus=2.0, pids=1024),
    "performance-m": Limits(memory_bytes=2560 * MiB, cpus=2.0, pids=4096),
    "performance-l": Limits(memory_bytes=14336 * MiB, cpus=2.0, pids=16384),
}
DEFAULT_SIZE = "standard-1x"
PATH = "/app/bin:/usr/local/bin:/usr/bin:/bin"
#: Source .profile.d, then run the command line with bash, as Heroku does. bash execs a
#: single command in place (dash would stay as its parent), so the command is the main
#: process: SIGTERM reaches it first and its exit status is the dyno's.
#: A Docker dyno's network is attached once the container runs: it waits (at most 5 s)
#: for the daemon's mark in /run/selfhost before anything else.
PROFILE = (
    'if [ -n "${SELFHOST_WAIT_NETWORK:-}" ]; then i=0; while [ ! -e /run/selfhost/network ] '
    "&& [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done; unset SELFHOST_WAIT_NETWORK; fi; "
    'for f in /app/.profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; '
    '[ -x /bin/bash ] && exec /bin/bash -c "$1"; exec /bin/sh -c "$1"'
)
MAX_TTL = 86_400
#: Process types that get a PORT: web (as on Heroku) and distccd (the compile hosts).
LISTENING = ("web", "distccd")
#: The uid a process type has inside its sandbox (default 0, which is the app's
#: unprivileged host id): distccd refuses to run as root, so it is nobody inside.
RUN_AS = {"distccd": 65534}
#: Listening dynos of an app get host ports from a block of this many (web.N and
#: distccd.N each from half of it).
PORT_BLOCK = 32
NETWORK_VAR = "SELFHOST_NETWORK"  # "internet": the app's dynos may connect outside
KEEP_FINISHED = 50  # finished dynos kept per app (for `ps` and exit codes)
BACKOFF_MAX = 60.0
STABLE_SECONDS = 10.0  # a dyno up this long resets its crash count


@dataclass(frozen=True)
class DynoSettings:
    """What the daemon needs to run dynos (written by the task that starts it)."""

    stacks: str
    suite: str
    variant: str
    base_packages: tuple[str, ...]
    mirror: str | None
    engine: str = "bwrap"
    docker_url: str | None = None
    grace_seconds: float = 30.0
    boot_timeout: float = 60.0  # a web dyno binds $PORT within this, or crashes (R10)
    max_children: int = 32  # live child dynos per app (see DynoManager.run)
    sandbox_uid_base: int = 1_700_000_000
    sandbox_uid_count: int = 65536
    disk_bytes: int = 1 << 30
    slug_max_unpacked_bytes: int = 2_000_000_000
    slug_max_files: int = 200_000
    port_base: int = 20000  # app n's listening dynos use ports port_base + 32 (n - 1) ...
    queues: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, s: Settings) -> DynoSettings:
        return cls(
            stacks=str(s.stacks),
            suite=s.suite,
            variant=s.variant,
            base_packages=s.base_packages,
            mirror=s.mirror,
            engine=s.engine,
            docker_url=s.docker_url,
            grace_seconds=s.dyno_grace_seconds,
            boot_timeout=s.dyno_boot_timeout,
            max_children=s.dyno_max_children,
            sandbox_uid_base=s.sandbox_uid_base,
            sandbox_uid_count=s.sandbox_uid_count,
            disk_bytes=s.dyno_disk_bytes,
            port_base=s.dyno_port_base,
            slug_max_unpacked_bytes=s.slug_max_unpacked_bytes,
            slug_max_files=s.slug_max_files,
            queues=s.queues,
        )

    @property
    def ids(self) -> SandboxIds:
        return SandboxIds(self.sandbox_uid_base, self.sandbox_uid_count)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> DynoSettings:
        data = json.loads(path.read_text())
        data["base_packages"] = tuple(data["base_packages"])
        data["queues"] = tuple(data.get("queues", ()))
        return cls(**data)


@dataclass
class Extras:
    """What the platform's other parts add to a dyno (compile workers: the queue)."""

    env: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[Path, str]] = field(default_factory=list)  # writable binds
    host_ports: tuple[int, ...] = ()  # host loopback ports the dyno may reach


def terminal_of(body: dict[str, Any], env: dict[str, str]) -> tuple[int, int] | None:
    """The size of the attached client's terminal, if it has one: ``{"tty": true}`` with
    ``COLUMNS`` and ``LINES`` in ``env``, or both of them alone, which is how Heroku's CLI
    says so (it sends them only when its output is a terminal). ``{"tty": false}`` or
    Heroku's ``{"force_no_tty": true}`` (``heroku run --no-tty``): a pipe whatever the
    env says."""
    if not body.get("attach") or body.get("tty") is False or body.get("force_no_tty"):
        return None
    columns, lines = env.get("COLUMNS", ""), env.get("LINES", "")
    if (
        columns.isdigit()
        and lines.isdigit()
        and 0 < int(columns) < 10000
        and 0 < int(lines) < 10000
    ):
        return int(columns), int(lines)
    return (80, 24) if body.get("tty") is True else None


#: How long after its end an attached dyno's client may still connect and read it all.
ATTACH_AFTER_END_SECONDS = 60.0


class DynoObserver(Protocol):
    """A part of the platform that takes part in every dyno's life (the job service:
    compile workers get their queue, and their jobs back when they end)."""

    def dyno_environment(self, dyno: Dyno, config: dict[str, str]) -> Extras:
        """Extra environment, mounts and reachable ports for a dyno, given its config."""
        ...

    def dyno_changed(self, dyno: Dyno) -> None:
        """Called when a dyno is up, and when it starts stopping (the router's table)."""
        ...

    def dyno_exited(self, dyno: Dyno) -> None:
        """Called once a dyno has ended."""
        ...


@dataclass(eq=False)
class Dyno:
    """One dyno: a command of a release in a sandbox."""

    id: str
    app: str
    app_id: str
    name: str
    type: str
    command: str
    size: str
    release_id: str
    release_version: int
    slug_sha: str
    engine: str
    attach: bool = False
    ttl: float | None = None
    parent: str | None = None  # the job that started it (compile workers)
    #: the process tree: the app's short number for it, and its parent's (0: started by
    #: the platform or a person), whose dyno id is ``parent_dyno`` (docs/platform.md)
    pid: int = 0
    ppid: int = 0
    parent_dyno: str | None = None
    port: int | None = None
    listen: str | None = None  # the address a distccd dyno listens on
    state: str = "starting"
    exit_code: int | None = None
    reason: str | None = None
    restarts: int = 0
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    up_since: float = 0.0  # when it came up (wall clock)
    netns: int = 0  # the inode of its network namespace (0: the host's)
    attach_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    #: ``(columns, lines)`` of the attached client's terminal: the dyno runs in a
    #: pseudo-terminal of that size (bwrap), else its stdin is a pipe
    tty: tuple[int, int] | None = None
    process: Process | None = None
    fs: DynoFs | None = None  # its writable storage (the job service mounts parts of it)
    stack: Stack | None = None
    host_id: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # the sandbox's facts at exit
    stopping: bool = False
    grace: float | None = None  # the stop's grace period (None: the platform's)
    _buffer: bytearray = field(default_factory=bytearray)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    # stdin of an attached one-off (bwrap): what came before the command started
    _pending_input: bytearray = field(default_factory=bytearray)
    _input_closed: bool = False
    _input_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def live(self) -> bool:
        return self.state in ("starting", "up")

    @property
    def index(self) -> int:
        return int(self.name.rpartition(".")[2] or 0)

    def set_state(self, state: str) -> None:
        self.state = state
        self.updated_at = now()

    def running(self, process: Process) -> None:
        """The command runs: what was typed before it started goes to its stdin."""
        with self._cond:
            self.process = process
            pending, self._pending_input = bytes(self._pending_input), bytearray()
            closed = self._input_closed
        if pending:
            self.write_input(pending)
        if closed:
            self.close_input()

    def write_input(self, data: bytes) -> None:
        """Bytes for the command's stdin (from an attached client)."""
        with self._cond:
            if self._input_closed:
                return
            pipe = self.process.stdin if self.process is not None else None
            if pipe is None and self.process is None:
                self._pending_input += data
                return
        if pipe is not None:
            with self._input_lock, contextlib.suppress(OSError, ValueError):
                pipe.write(data)
                pipe.flush()

    def close_input(self) -> None:
        """End of input: the command reads EOF (in a terminal: Ctrl-D, which its line
        discipline reads as end of file; closing it would hang the session up)."""
        if self.tty is not None:
            self.write_input(b"\x04")
        with self._cond:
            self._input_closed = True
            pipe = self.process.stdin if self.process is not None else None
        if pipe is not None and self.tty is None:
            with contextlib.suppress(OSError, ValueError):
                pipe.close()

    def append(self, data: bytes) -> None:
        with self._cond:
            self._buffer += data
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.ended = time.monotonic()
            self._cond.notify_all()

    def output(self, start: int = 0) -> Iterator[bytes]:
        """The dyno's output from ``start``, live, until the dyno has ended."""
        position = start
        while True:
            with self._cond:
                while len(self._buffer) <= position and self.ended is None:
                    self._cond.wait(timeout=1.0)
                chunk = bytes(self._buffer[position:])
                done = self.ended is not None
            if chunk:
                position += len(chunk)
                yield chunk
            elif done:
                return

    def to_json(self, base_url: str = "", rendezvous_url: str | None = None) -> dict[str, Any]:
        """Heroku's dyno; ``attach_url`` is the rendezvous URL (stdin and output, TLS)
        when there is one, ``attach_http_url`` the output alone, streamed over HTTP (whoever
        opens it has no input to give: the command reads EOF)."""
        http = (
            f"{base_url}/dynos/{self.id}/attach?token={self.attach_token}"
            if (self.attach or self.parent_dyno) and base_url
            else None
        )
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "state": self.state,
            "command": self.command,
            "size": self.size,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attach_url": (rendezvous_url if self.attach and rendezvous_url else http),
            "attach_http_url": http,
            "release": {"id": self.release_id, "version": self.release_version},
            "app": {"id": self.app_id, "name": self.app},
            "exit_code": self.exit_code,
            "reason": self.reason,
            "restarts": self.restarts,
            "engine": self.engine,
            "parent": self.parent,
            "pid": self.pid,
            "ppid": self.ppid,
            "time_to_live": self.ttl,
            "parent_dyno": self.parent_dyno,
            "port": self.port,
            "listen": self.listen,
            "stats": self.stats,
        }


class AppLog:
    """The app's log: ``<timestamp> <source>[<dyno>]: <line>``, as Heroku writes it."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, source: str, dyno: str, text: str) -> None:
        self.append(self.lines(source, dyno, text))

    _second: tuple[int, str] = (-1, "")  # the last second formatted (the router's lines)

    @classmethod
    def lines(cls, source: str, dyno: str, text: str) -> str:
        """``text`` as log lines, stamped now (the router stamps and writes later)."""
        ns = time.time_ns()
        second, formatted = cls._second
        if ns // 10**9 != second:
            second = ns // 10**9
            formatted = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            cls._second = (second, formatted)
        stamp = f"{formatted}.{ns % 10**9 // 1000:06d}Z"
        if "\n" not in text:  # one line, as the router's are
            return f"{stamp} {source}[{dyno}]: {text}\n"
        return "".join(f"{stamp} {source}[{dyno}]: {line}\n" for line in text.splitlines())

    def append(self, lines: str) -> None:
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)


#: the Dyno fields a kept dyno's record carries (what a restarted daemon rebuilds)
KEPT_FIELDS = (
    "id",
    "app",
    "app_id",
    "name",
    "type",
    "command",
    "size",
    "release_id",
    "release_version",
    "slug_sha",
    "engine",
    "ttl",
    "parent",
    "pid",
    "ppid",
    "parent_dyno",
    "port",
    "listen",
    "restarts",
    "created_at",
    "updated_at",
    "up_since",
    "netns",
    "host_id",
)


def read_kept(directory: Path) -> list[dict[str, Any]]:
    """The records of the dynos a killed daemon left (``kept/<id>/record.json``), each
    with ``id`` and ``alive`` (its keeper still runs it); unreadable ones are dropped."""
    from selfhost.stages.bwrap import keeper_alive

    records = []
    for path in sorted(directory.glob("*/record.json")):
        try:
            record = json.loads(path.read_text())
            record["id"] = record["dyno"]["id"]
            record["alive"] = keeper_alive(record["process"])
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(path.parent, ignore_errors=True)
            continue
        records.append(record)
    for stray in directory.glob("*") if directory.is_dir() else []:
        if not (stray / "record.json").exists():  # killed before it was up
            shutil.rmtree(stray, ignore_errors=True)
    return records


def _punch_hole(fd: int, length: int) -> None:
    """Free the blocks of ``[0, length)`` of a file, its size and offsets unchanged
    (``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)``); best effort."""
    if length > 0:
        libc.fallocate(
            fd,
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            ctypes.c_long(0),
            ctypes.c_long(length),
        )


class KeptOutput:
    """The output of a dyno that outlives the daemon: the sandbox writes a file itself
    (``fileno``), which a thread follows into the dyno's output (its attach buffer and
    the app's log); a restarted daemon follows it on from the offset last recorded."""

    POLL = 0.05

    def __init__(self, path: Path, sink: DynoOutput, offset: int = 0):
        self.path = path
        self.sink = sink
        self.offset = offset
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def fileno(self) -> int:
        return self.fd

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def flush(self) -> None:
        pass

    def start(self) -> None:
        self.thread = threading.Thread(target=self._follow, daemon=True, name="kept-output")
        self.thread.start()

    def _follow(self) -> None:
        saved, last = self.offset, time.monotonic()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while True:
                data = f.read(65536)
                if data:
                    self.sink.write(data)
                    self.offset += len(data)
                    continue
                if self.done.is_set():
                    break
                if self.offset != saved and time.monotonic() - last > 1.0:
                    with contextlib.suppress(OSError):
                        tmp = self.path.with_name("offset.tmp")
                        tmp.write_text(str(self.offset))
                        tmp.replace(self.path.with_name("offset"))
                        # what was read takes no disk: a chatty dyno cannot fill the host's
                        _punch_hole(self.fd, self.offset - self.offset % 4096)
                    saved, last = self.offset, time.monotonic()
                self.done.wait(self.POLL)

    def drain(self) -> None:
        """The sandbox has ended: follow the file to its end, then stop."""
        if self.done.is_set():
            return
        self.done.set()
        if self.thread is not None:
            self.thread.join()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class DynoOutput:
    """Where a dyno's stdout and stderr go: the attach buffer and the app's log."""

    def __init__(self, dyno: Dyno, log: AppLog):
        self.dyno = dyno
        self.log = log
        self.partial = b""

    def write(self, data: bytes) -> int:
        self.dyno.append(data)
        complete, _, self.partial = (self.partial + data).rpartition(b"\n")
        if complete:
            self.log.write("app", self.dyno.name, complete.decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.partial:
            self.log.write("app", self.dyno.name, self.partial.decode("utf-8", "replace"))
            self.partial = b""


class DynoManager:
    """Starts, tracks and stops the dynos of every app of one platform."""

    def __init__(
        self,
        store: Store,
        paths: PlatformPaths,
        settings: DynoSettings,
        *,
        api_port: Callable[[], int],
        log: Callable[[str], None] = lambda _: None,
    ):
        self.store = store
        self.paths = paths
        self.settings = settings
        self.api_port = api_port
        self.log = log
        self.lock = threading.RLock()
        self.dynos: dict[str, Dyno] = {}
        self.counters: dict[tuple[str, str], int] = {}
        self.engines: dict[str, Engine] = {}
        self.logs: dict[str, AppLog] = {}
        self.stacks = StackStore(Path(settings.stacks), self._mirror)
        self.security = security.load(paths.security, settings.ids, log=log)
        # the dynos a killed daemon left running: adopted (adopt()); the rest is cleaned
        self.orphans = read_kept(paths.kept)
        alive = [r for r in self.orphans if r.get("alive")]
        self.networks = (
            Networks(paths.net, keep=frozenset(int(r["pasta"]) for r in alive if r["pasta"]))
            if self.security.hardened
            else None
        )
        self.observers: list[DynoObserver] = []
        self.dynos_dir = paths.dynos
        # left by a killed daemon, before what they bind
        staging.clean_stale(
            frozenset(r["process"]["staged"]["directory"] for r in alive if r["process"]["staged"])
        )
        release_stale_dynos(self.dynos_dir, frozenset(r["id"] for r in alive))
        store.revoke_tokens(keep=tuple(r["id"] for r in alive))  # their dynos are gone

    def observe(self, observer: DynoObserver) -> None:
        """Have ``observer`` take part in every dyno started from now on."""
        self.observers.append(observer)

    def _mirror(self) -> str:
        from selfhost.mirror import debian_mirror

        return debian_mirror(self.settings.mirror)

    # ------------------------------------------------------------------ helpers
    def engine(self, name: str | None = None) -> Engine:
        name = name or self.settings.engine
        with self.lock:
            if name not in self.engines:
                engine = make_engine(name, self.security, docker_url=self.settings.docker_url)
                engine.check()
                self.engines[name] = engine
            return self.engines[name]

    def app_log(self, app: str) -> AppLog:
        with self.lock:
            if app not in self.logs:
                self.logs[app] = AppLog(self.paths.logs / f"{app}.log")
            return self.logs[app]

    @property
    def unpack_limits(self) -> ArchiveLimits:
        """What one slug may unpack to."""
        return ArchiveLimits(
            max_bytes=self.settings.slug_max_unpacked_bytes,
            max_members=self.settings.slug_max_files,
        )

    def host_id(self, app: str) -> int:
        """The unprivileged host id the app's dynos run as."""
        return self.security.host_id(self.settings.ids.app(self.store.app_number(app)))

    def slug_dir(self, sha: str, host_id: int = 0) -> Path:
        """The release's slug, unpacked once per host id (checked and bounded as it is
        unpacked) and owned by that id, so that its dynos may change their /app."""
        target = self.paths.slugs / f"{sha}-{host_id}"
        with self.lock:
            if not (target / "app").is_dir():
                shutil.rmtree(target, ignore_errors=True)
                unpack(self.paths.blob(sha), target, self.unpack_limits)
                hand_over(self.security, host_id, target / "app")
        return target / "app"

    def stack_for(self, app_stack: str, slug_app: Path) -> Stack:
        """The stack the slug says it runs on if it is here, else the base stack of the
        app's suite (built with debootstrap if needed)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            meta = json.loads((slug_app / "selfhost.json").read_text())
            runs_on = meta.get("runs_on") or meta["built_on"]  # older slugs: built_on
            stack = self.stacks.load_digest(str(runs_on["digest"]))
            if stack:
                return stack
        suite = (
            app_stack if app_stack in ("bullseye", "bookworm", "trixie") else self.settings.suite
        )
        spec = StackSpec.make(suite, self.settings.variant, self.settings.base_packages)
        return self.stacks.ensure(spec, log=self.log)

    def stack_identity(self, app: str) -> dict[str, Any]:
        """The identity of the stack the app's current slug runs on."""
        release = self.store.current_release(app)
        if release is None or release["slug"] is None:
            raise not_found("release")
        slug = self.store.slug(app, release["slug"]["id"])
        sha = (slug["checksum"] or ":").split(":", 1)[1]
        return self.stack_for(
            self.store.app(app)["stack"]["name"], self.slug_dir(sha, self.host_id(app))
        ).identity

    def port_of(self, app: str, kind: str, index: int) -> int:
        """The host port of a listening dyno (web.N, distccd.N): fixed by the app's
        number, so the app's other dynos can be allowed to reach it."""
        half = PORT_BLOCK // 2
        if not 1 <= index <= half:
            raise invalid(f"only {half} {kind} dynos can listen per app")
        base = self.settings.port_base + PORT_BLOCK * (self.store.app_number(app) - 1)
        return base + (half if kind != "web" else 0) + index - 1

    def app_ports(self, app: str) -> tuple[int, ...]:
        """Every host port the app's listening dynos may use (its peers)."""
        base = self.settings.port_base + PORT_BLOCK * (self.store.app_number(app) - 1)
        return tuple(range(base, base + PORT_BLOCK))

    def _next_name(self, app: str, kind: str) -> str:
        with self.lock:
            n = self.counters.get((app, kind), 0) + 1
            self.counters[(app, kind)] = n
            return f"{kind}.{n}"

    # ------------------------------------------------------------------ API-level
    def run(self, app: str, body: dict[str, Any], by: str | None = None) -> Dyno:
        """``POST /apps/{app}/dynos``: a one-off dyno of the current release. Asked for
        by a dyno (``by``, the id behind its token), it is that dyno's child: see
        :meth:`_parent_for`."""
        command = body.get("command")
        if not isinstance(command, str) or not command.strip():
            raise invalid("command must be a non-empty string (the command line to run)")
        size = body.get("size") or DEFAULT_SIZE
        if isinstance(size, str):
            size = size.lower()  # the schema spells them standard-1X
        if size not in SIZES:
            raise invalid(f"size must be one of {', '.join(SIZES)}")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str)
            and (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)))
            for k, v in env.items()
        ):
            raise invalid("env must be an object of string values")
        # Heroku's CLI sends its terminal's COLUMNS and LINES as numbers
        env = {k: str(v) for k, v in env.items()}
        ttl = body.get("time_to_live")
        if ttl is not None and (
            not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL
        ):
            raise invalid(f"time_to_live must be 1 to {MAX_TTL} seconds")
        kind = body.get("type") or "run"
        if kind != "run":
            raise invalid(
                "only one-off dynos (type: run) can be created; scale the formation for the others"
            )
        engine = body.get("engine") or self.settings.engine
        if engine not in ("bwrap", "docker"):
            raise invalid("engine must be bwrap or docker")
        parent = self._parent_for(by) if by else None
        if parent is not None:
            ttl = self._child_ttl(parent, ttl)
        return self.start(
            app,
            kind,
            command,
            tty=terminal_of(body, env) if engine == "bwrap" else None,
            size=size,
            env=env,
            ttl=ttl,
            attach=bool(body.get("attach")),
            engine=engine,
            parent=body.get("parent"),
            parent_dyno=parent,
        )

    # ------------------------------------------------------------------ the process tree
    def _parent_for(self, by: str) -> Dyno | None:
        """The dyno that asks for a one-off is its parent (a fork); :meth:`start` refuses
        one that is ending (its children would outlive it)."""
        return self.by_id(by)  # None: a token of a dyno this daemon does not run

    def _child_ttl(self, parent: Dyno, ttl: float | None) -> float | None:
        """A child lives no longer than its parent may: its time to live is at most what
        is left of the parent's."""
        if parent.ttl is None:
            return ttl
        left = parent.ttl - (time.monotonic() - parent.started)
        if left < 1:
            raise Refused(
                "conflict",
                f"{parent.name} (pid {parent.pid}) has under a second to live: "
                "it may not start children",
            )
        return left if ttl is None else min(ttl, left)

    def max_children(self, app: str) -> int:
        """Live children an app may have: ``selfhost.dyno_max_children``, or less if the
        app's ``SELFHOST_MAX_CHILDREN`` config var says so."""
        limit = self.settings.max_children
        own = self.store.config(app).get("SELFHOST_MAX_CHILDREN", "")
        if own.strip().isdigit():
            limit = min(limit, int(own))
        return limit

    def children(self, dyno: Dyno) -> list[Dyno]:
        with self.lock:
            return [d for d in self.dynos.values() if d.parent_dyno == dyno.id and d.live]

    def _stop_children(self, dyno: Dyno, why: str) -> None:
        """The process group: a parent's end (or stop) stops its children, and theirs."""
        for child in self.children(dyno):
            self.stop(child, f"its parent {dyno.name} (pid {dyno.pid}) {why}")

    def start(
        self,
        app: str,
        kind: str,
        command: str,
        *,
        size: str,
        env: dict[str, str],
        ttl: float | None = None,
        attach: bool = False,
        engine: str | None = None,
        name: str | None = None,
        parent: str | None = None,
        tty: tuple[int, int] | None = None,
        parent_dyno: Dyno | None = None,
    ) -> Dyno:
        """Start a dyno of the app's current release; return at once."""
        release = self.store.current_release(app)
        if release is None or release["slug"] is None:
            raise invalid(
                f"{app} has no release with a slug yet: release one first (invoke release)",
            )
        slug = self.store.slug(app, release["slug"]["id"])
        sha = (slug["checksum"] or ":").split(":", 1)[1]
        dyno = Dyno(
            id=str(uuid.uuid4()),
            app=release["app"]["name"],
            app_id=release["app"]["id"],
            name=name or self._next_name(release["app"]["name"], kind),
            type=kind,
            command=command,
            size=size,
            release_id=release["id"],
            release_version=release["version"],
            slug_sha=sha,
            engine=engine or self.settings.engine,
            attach=attach,
            ttl=ttl,
            parent=parent,
            tty=tty if attach else None,
            pid=self.store.next_pid(release["app"]["id"]),
        )
        config = self.store.config(app)
        limit = self.max_children(app) if parent_dyno is not None else 0
        with self.lock:
            if parent_dyno is not None:
                # checked and counted at once: concurrent forks cannot pass the quota
                if not parent_dyno.live or parent_dyno.stopping:
                    raise Refused(
                        "conflict",
                        f"{parent_dyno.name} (pid {parent_dyno.pid}) is stopping: "
                        "it may not start children",
                    )
                live = sum(
                    1 for d in self.dynos.values() if d.app == dyno.app and d.parent_dyno and d.live
                )
                if live >= limit:
                    raise Refused(
                        "quota_exceeded",
                        f"{dyno.app} has {live} live child dynos, the most it may have "
                        f"({limit}: selfhost.dyno_max_children, or the app's "
                        "SELFHOST_MAX_CHILDREN config var if lower); wait for one to end",
                    )
                dyno.parent_dyno, dyno.ppid = parent_dyno.id, parent_dyno.pid
            self.dynos[dyno.id] = dyno
        threading.Thread(
            target=self._lifecycle, args=(dyno, config, env), daemon=True, name=f"dyno-{dyno.name}"
        ).start()
        return dyno

    def _lifecycle(self, dyno: Dyno, config: dict[str, str], extra_env: dict[str, str]) -> None:
        """Start, wait, stop; whatever fails, the dyno ends with a reason and everything
        it held is released."""
        log = self.app_log(dyno.app)
        output = DynoOutput(dyno, log)
        held = Held()
        log.write("heroku", dyno.name, f"Starting process with command `{dyno.command}`")
        try:
            process = self._start_sandbox(dyno, config, extra_env, output, held)
        except Exception as exc:  # anything: a bad slug, a missing stack, a bug
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            dyno.exit_code, dyno.reason = 127, f"failed to start: {message}"
            dyno.set_state("crashed" if dyno.type != "run" else "down")
            log.write("heroku", dyno.name, f"Error starting dyno: {message}")
            dyno.append(f"selfhost: the dyno could not start: {message}\n".encode())
            if not isinstance(exc, SelfhostError | Refused | OSError):
                self.log(f"dynos: {dyno.name} of {dyno.app}: {exc!r}")
            self._end(dyno, output, held)
            return
        try:
            dyno.running(process)
            if dyno.stopping:  # stopped (ps.stop, scale, ttl) while it was starting
                self._stop_process(dyno, dyno.grace)
            else:
                dyno.set_state("up")
                dyno.up_since = time.time()
                log.write("heroku", dyno.name, "State changed from starting to up")
                self._keep(dyno, held)
                self._changed(dyno)
                if dyno.type == "web":
                    threading.Thread(
                        target=self._watch_boot, args=(dyno,), daemon=True, name="boot"
                    ).start()
        except Exception as exc:  # a bug: it still ends, with the reason
            self._failed(dyno, exc)
            self._end(dyno, output, held)
            return
        self._run_to_end(dyno, output, held)

    def _failed(self, dyno: Dyno, exc: Exception) -> None:
        """A bug while it started or ran: it ends, with the reason."""
        self.log(f"dynos: {dyno.name} of {dyno.app}: {exc!r}")
        if dyno.process is not None:
            with contextlib.suppress(Exception):
                dyno.process.kill()
        dyno.reason = dyno.reason or f"platform error: {type(exc).__name__}: {exc}"
        dyno.exit_code = dyno.exit_code if dyno.exit_code is not None else 137
        dyno.set_state("crashed")

    def _run_to_end(self, dyno: Dyno, output: DynoOutput, held: Held) -> None:
        try:
            self._wait(dyno, output, held)
        except Exception as exc:  # a bug while it ran: it still ends, with the reason
            self._failed(dyno, exc)
        self._end(dyno, output, held)

    def _end(self, dyno: Dyno, output: DynoOutput, held: Held) -> None:
        """Whatever happened: its output is flushed, what it held released, and the
        platform's other parts are told."""
        with contextlib.suppress(Exception):
            if held.kept is not None:
                held.kept.drain()
        with contextlib.suppress(Exception):
            output.close()
        self._release(dyno, held)
        dyno.finish()
        with contextlib.suppress(Exception):
            self._stop_children(dyno, "ended")
        self._exited(dyno)
        self._forget_old(dyno.app)

    def _start_sandbox(
        self,
        dyno: Dyno,
        config: dict[str, str],
        extra_env: dict[str, str],
        output: DynoOutput,
        held: Held,
    ) -> Process:
        """Everything a dyno needs, then its sandbox; what was acquired goes in ``held``."""
        host_id = self.host_id(dyno.app)
        slug_app = self.slug_dir(dyno.slug_sha, host_id)
        app_info = self.store.app(dyno.app)
        stack = self.stack_for(app_info["stack"]["name"], slug_app)
        held.fs = DynoFs.create(
            self.dynos_dir / dyno.id, slug_app, host_id, self.settings.disk_bytes, self.security
        )
        dyno.fs, dyno.stack, dyno.host_id = held.fs, stack, host_id
        env = {"PATH": PATH, "HOME": "/app", "LANG": "C.UTF-8", **config, **extra_env}
        env.pop("PORT", None)
        extras = Extras()
        for observer in self.observers:
            more = observer.dyno_environment(dyno, config)
            extras.env.update(more.env)
            extras.mounts += more.mounts
            extras.host_ports += more.host_ports
        env.update(extras.env)
        held.token = self.store.issue_token(dyno.app_id, dyno.id)
        env.update(
            {
                "DYNO": dyno.name,
                "DYNO_SIZE": dyno.size,
                "SELFHOST_APP": dyno.app,
                "SELFHOST_DYNO_ID": dyno.id,
                "SELFHOST_API_TOKEN": held.token,
                "SELFHOST_API_URL": f"http://127.0.0.1:{self.api_port()}",
            }
        )
        inbound = None
        if dyno.type in LISTENING:
            if self.networks is None:  # the weakened sandbox shares the host network
                dyno.port = _free_port()
            else:
                dyno.port = self.port_of(dyno.app, dyno.type, dyno.index)
            dyno.listen = "127.0.0.1"
            env["PORT"] = str(dyno.port)
            inbound = ("127.0.0.1", dyno.port)
        engine = self.engine(dyno.engine)
        mounts = [Mount(held.fs.app, "/app", writable=True)]
        scratch: tuple[str, ...] = ("/tmp", "/build")
        if held.fs.tmpfs:  # the bounded tmpfs holds them
            mounts += [
                Mount(held.fs.tmp, "/tmp", writable=True),
                Mount(held.fs.build, "/build", writable=True),
                Mount(held.fs.ctl, "/run/selfhost"),
            ]
            scratch = ()
        # after /tmp and /build: a queue socket's directory may lie below them
        mounts += [Mount(src, dst, writable=True) for src, dst in extras.mounts]
        netns = None
        if self.networks is not None:
            reachable = (self.api_port(), *self.app_ports(dyno.app), *extras.host_ports)
            policy = Policy(
                # its own PORT is its own: pasta must not listen on it inside
                host_ports=tuple(p for p in reachable if p != dyno.port),
                inbound=inbound,
                outbound=config.get(NETWORK_VAR) == "internet",
            )
            if engine.name == "bwrap":
                held.namespace = self.networks.take(policy)
                netns = held.namespace.fd
                dyno.netns = os.fstat(netns).st_ino
                (held.fs.ctl / "network").touch()
            else:
                env["SELFHOST_WAIT_NETWORK"] = "1"
        sandbox = Sandbox(
            stack=stack,
            argv=(
                # a terminal: the command's controlling one (Ctrl-C is its SIGINT)
                *(("/usr/bin/setsid", "--ctty", "--wait") if dyno.tty else ()),
                "/bin/sh",
                "-c",
                PROFILE,
                "dyno",
                dyno.command,
            ),
            env=tuple(env.items()),
            mounts=tuple(mounts),
            workdir="/app",
            network=True,
            netns=netns,
            limits=SIZES[dyno.size],
            scratch=scratch,
            owner=str(self.paths.root),
            label=f"dyno-{dyno.id}",
            uid=RUN_AS.get(dyno.type, 0),
            host_id=host_id,
            stdin=dyno.attach and engine.name == "bwrap",  # its attached client types
            tty=dyno.tty if engine.name == "bwrap" else None,
            keeper=str(self._kept_dir(dyno) / "status") if self._keeps(dyno, engine) else None,
        )
        if sandbox.keeper:  # it outlives this daemon: its output goes to a file
            held.kept = KeptOutput(Path(sandbox.keeper).with_name("output"), output)
        process = engine.start(sandbox, held.kept or output)
        if held.kept is not None:
            held.kept.start()
        if self.networks is not None and netns is None:  # Docker: attach to the container
            try:
                held.namespace = self.networks.attach(process.namespace_pid(), policy)
                dyno.netns = os.fstat(held.namespace.fd).st_ino
            except Exception:
                process.kill()
                process.wait()
                process.close()
                raise
            (held.fs.ctl / "network").touch()
        return process

    def _wait(self, dyno: Dyno, output: DynoOutput, held: Held) -> None:
        """Wait for the command (its time to live, then a graceful stop) and record how
        it ended. Its network goes first: once a dyno is reported down, its port is free."""
        log = self.app_log(dyno.app)
        assert dyno.process is not None
        code = dyno.process.wait(dyno.ttl)
        if code is None:  # time to live expired
            dyno.reason = f"time to live of {dyno.ttl:g}s expired"
            log.write("heroku", dyno.name, f"Stopping: {dyno.reason}")
            self._stop_process(dyno)
            code = dyno.process.wait()
        facts = dyno.process.close()
        dyno.stats = facts
        if held.kept is not None:
            held.kept.drain()
        output.close()
        self._release_network(held)
        if facts.get("oom_killed"):
            dyno.reason = (
                f"memory quota exceeded: the {dyno.size} size allows "
                f"{(SIZES[dyno.size].memory_bytes or 0) // MiB} MB (R15)"
            )
            log.write("heroku", dyno.name, f"Error R15 ({dyno.reason})")
        dyno.exit_code = code
        if dyno.stopping or dyno.type == "run":
            dyno.set_state("down")
        else:
            dyno.set_state("crashed")
            dyno.reason = dyno.reason or f"exited with status {code}"
        log.write("heroku", dyno.name, f"Process exited with status {code}")
        log.write("heroku", dyno.name, f"State changed from up to {dyno.state}")

    def _release(self, dyno: Dyno, held: Held) -> None:
        """Give back what a dyno held, each part on its own (one failing stops none)."""
        if held.token:
            with contextlib.suppress(Exception):
                self.store.revoke_tokens(dyno.id)
        with contextlib.suppress(Exception):
            self._release_network(held)
        if held.kept is not None:
            shutil.rmtree(self.paths.kept / dyno.id, ignore_errors=True)
        if held.fs is not None:
            with contextlib.suppress(Exception):
                held.fs.remove()
        else:
            shutil.rmtree(self.dynos_dir / dyno.id, ignore_errors=True)

    def _watch_boot(self, dyno: Dyno) -> None:
        """A web dyno binds ``$PORT`` within the boot timeout, or it crashes (R10)."""
        process, port = dyno.process, dyno.port
        if process is None or port is None:
            return
        timeout = self.settings.boot_timeout
        deadline = dyno.started + timeout
        try:
            pid = process.namespace_pid()
        except Exception:
            return  # it is ending already
        while dyno.ended is None and not dyno.stopping:
            if probe.bound(pid, port, dyno.netns):
                return
            if time.monotonic() > deadline:
                reason = f"Web process failed to bind to $PORT within {timeout:g} seconds of launch"
                log = self.app_log(dyno.app)
                log.write("heroku", dyno.name, f"Error R10 (Boot timeout) -> {reason}")
                log.write("heroku", dyno.name, "Stopping process with SIGKILL")
                dyno.reason = f"R10: {reason}"
                process.kill()
                return
            time.sleep(0.05)

    # ------------------------------------------------------------------ kept dynos
    def _keeps(self, dyno: Dyno, engine: Engine) -> bool:
        """Whether a dyno outlives the daemon: the formation's and detached one-offs on
        bwrap (an attached one's client talks to this daemon; Docker's are not yet)."""
        return engine.name == "bwrap" and not dyno.attach and dyno.tty is None

    def _kept_dir(self, dyno: Dyno) -> Path:
        directory = self.paths.kept / dyno.id
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory

    def _keep(self, dyno: Dyno, held: Held) -> None:
        """Record what a restarted daemon needs to adopt this dyno (it is up)."""
        if held.kept is None or dyno.process is None:
            return
        record_of = getattr(dyno.process, "record", None)
        if record_of is None:
            return
        record = {
            "dyno": {name: getattr(dyno, name) for name in KEPT_FIELDS},
            "process": record_of(),
            "fs": None
            if held.fs is None
            else {"root": str(held.fs.root), "tmpfs": held.fs.tmpfs, "overlay": held.fs.overlay},
            "pasta": held.namespace.pasta if held.namespace else None,
            "token": held.token,
        }
        write_json_atomic(self.paths.kept / dyno.id / "record.json", record)

    def adopt(self) -> int:
        """Take over the dynos a killed daemon left running (call once, after every
        observer is registered); clean what the others left. How many were adopted."""
        adopted = 0
        orphans, self.orphans = self.orphans, []
        for record in orphans:
            try:
                adopted += self._adopt(record)
            except Exception as exc:  # one bad record stops none of the others
                self.log(f"dynos: cannot adopt {record.get('id')}: {exc!r}")
                shutil.rmtree(self.paths.kept / str(record.get("id")), ignore_errors=True)
        with self.lock:
            orphaned = [
                d
                for d in self.dynos.values()
                if d.parent_dyno and d.live and not self._alive(d.parent_dyno)
            ]
        for child in orphaned:  # its parent ended while no daemon watched
            self.stop(child, f"its parent (pid {child.ppid}) ended")
        return adopted

    def _alive(self, dyno_id: str) -> bool:
        found = self.dynos.get(dyno_id)
        return found is not None and found.live

    def _adopt(self, record: dict[str, Any]) -> int:
        fields = record["dyno"]
        directory = self.paths.kept / fields["id"]
        log = self.app_log(fields["app"])
        engine = self.engine("bwrap")
        process = engine.adopt(record["process"]) if record.get("alive") else None  # type: ignore[attr-defined]
        if process is None:  # it ended while no daemon watched: its exit is all we know
            status = (
                (directory / "status").read_text().strip()
                if (directory / "status").exists()
                else "unknown"
            )
            log.write(
                "heroku",
                fields["name"],
                f"Process exited with status {status} while the platform daemon was down",
            )
            cgroup = record["process"].get("cgroup") or {}
            for path in cgroup.get("dirs", {}).values():
                with contextlib.suppress(OSError):
                    Path(path).rmdir()
            shutil.rmtree(directory, ignore_errors=True)
            return 0
        dyno = Dyno(**fields)
        dyno.process = process
        dyno.state = "up"
        held = Held(token=record.get("token"))
        if record.get("fs"):
            fs = record["fs"]
            held.fs = DynoFs(Path(fs["root"]), bool(fs["tmpfs"]), bool(fs["overlay"]))
            dyno.fs = held.fs
        if record.get("pasta") and self.networks is not None:
            fd = os.open(f"/proc/{process.namespace_pid()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            held.namespace = Namespace(fd, int(record["pasta"]), Policy())
        output = DynoOutput(dyno, log)
        offset = int((directory / "offset").read_text()) if (directory / "offset").exists() else 0
        log.write("heroku", dyno.name, "Adopted by the restarted platform daemon (still up)")
        held.kept = KeptOutput(directory / "output", output, offset=offset)
        held.kept.start()
        with self.lock:
            self.dynos[dyno.id] = dyno
            if dyno.index:
                key = (dyno.app, dyno.type)
                self.counters[key] = max(self.counters.get(key, 0), dyno.index)
        self._changed(dyno)
        threading.Thread(
            target=self._run_to_end, args=(dyno, output, held), daemon=True, name="adopted"
        ).start()
        return 1

    def _release_network(self, held: Held) -> None:
        """Stop the dyno's pasta and wait until it is gone (it held the dyno's port)."""
        namespace, held.namespace = held.namespace, None
        if namespace is not None and self.networks is not None:
            self.networks.release(namespace)

    def _changed(self, dyno: Dyno) -> None:
        for observer in self.observers:
            try:
                observer.dyno_changed(dyno)
            except Exception as exc:
                self.log(f"dynos: after {dyno.name} changed: {exc!r}")

    def _exited(self, dyno: Dyno) -> None:
        for observer in self.observers:
            try:
                observer.dyno_exited(dyno)
            except Exception as exc:  # the dyno is gone either way
                self.log(f"dynos: after {dyno.name} exited: {exc!r}")

    def _stop_process(self, dyno: Dyno, grace: float | None = None) -> None:
        """SIGTERM to the command; SIGKILL after the grace period."""
        process = dyno.process
        if process is None:
            return  # still starting: the lifecycle stops it as soon as it runs
        delivered = process.terminate()
        deadline = time.monotonic() + (self.settings.grace_seconds if grace is None else grace)
        while time.monotonic() < deadline:
            if dyno.ended is not None or process.wait(0.05) is not None:
                return
            # a dyno stopped as it starts: the SIGTERM waits for its command to exist
            delivered = delivered or process.terminate()
        self.app_log(dyno.app).write("heroku", dyno.name, "Stopping process with SIGKILL")
        process.kill()

    def stop(
        self, dyno: Dyno, reason: str = "stopped", wait: bool = False, grace: float | None = None
    ) -> None:
        """Stop a dyno gracefully, in the background unless ``wait``."""
        if not dyno.live or dyno.stopping:
            return
        dyno.stopping = True
        dyno.grace = grace
        dyno.reason = reason
        self._stop_children(dyno, "is stopping")
        self._changed(dyno)  # out of the router's rotation before its SIGTERM
        self.app_log(dyno.app).write("heroku", dyno.name, f"Stopping ({reason}): SIGTERM")
        thread = threading.Thread(target=self._stop_process, args=(dyno, grace), daemon=True)
        thread.start()
        if wait:
            thread.join()
            deadline = time.monotonic() + 60  # a dyno still starting ends once it runs
            while dyno.ended is None and time.monotonic() < deadline:
                time.sleep(0.05)

    def _forget_old(self, app: str) -> None:
        with self.lock:
            done = [d for d in self.dynos.values() if d.app == app and not d.live]
            for d in sorted(done, key=lambda d: d.started)[:-KEEP_FINISHED]:
                del self.dynos[d.id]

    def list(self, app: str) -> list[Dyno]:
        """Live dynos first, then the most recently finished ones."""
        self.store.app(app)  # 404 for an unknown app
        with self.lock:
            dynos = [d for d in self.dynos.values() if d.app == app or d.app_id == app]
        return sorted(dynos, key=lambda d: (not d.live, d.type, d.index, d.started))

    def get(self, app: str, ident: str) -> Dyno:
        """A dyno by id or name (the live one, else the latest with that name)."""
        candidates = [d for d in self.list(app) if ident in (d.id, d.name)]
        if not candidates:
            raise not_found("dyno")
        live = [d for d in candidates if d.live]
        return live[0] if live else max(candidates, key=lambda d: d.started)

    def select(self, app: str, ident: str | None = None) -> builtins.list[Dyno]:
        """The live dynos of an app: all of them, or those with this id, name or process
        type (Heroku's ``ps:restart web``); 404 when ``ident`` matches none."""
        live = [d for d in self.list(app) if d.live and not d.stopping]
        if ident is None:
            return live
        chosen = [d for d in live if ident in (d.id, d.name, d.type)]
        if not chosen:
            raise not_found("dyno")
        return chosen

    def retire(self, app: str, reason: str) -> None:
        """Stop every dyno of an app and wait until they have ended; then forget its
        dynos and delete its log (the app is being destroyed)."""
        with self.lock:
            dynos = [d for d in self.dynos.values() if app in (d.app, d.app_id) and d.live]
        threads = [
            threading.Thread(target=self.stop, args=(d, reason, True), daemon=True) for d in dynos
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self.lock:
            for d in [d for d in self.dynos.values() if app in (d.app, d.app_id)]:
                del self.dynos[d.id]
            log = self.logs.pop(app, None)
        (log.path if log else self.paths.logs / f"{app}.log").unlink(missing_ok=True)

    def by_id(self, dyno_id: str) -> Dyno | None:
        with self.lock:
            return self.dynos.get(dyno_id)

    def attachable(self, secret: str) -> Dyno | None:
        """The attached dyno whose secret this is (rendezvous): a live one, or one that
        ended less than :data:`ATTACH_AFTER_END_SECONDS` ago, whose client was slower
        than its command (``heroku run -- echo hi`` on a busy machine): it gets the whole
        output, kept since the start, and the connection closes."""
        now_ = time.monotonic()
        with self.lock:
            for dyno in self.dynos.values():
                if not dyno.attach or dyno.attach_token != secret:
                    continue
                if dyno.live or (
                    dyno.ended is not None and now_ - dyno.ended < ATTACH_AFTER_END_SECONDS
                ):
                    return dyno
        return None

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop every dyno (the daemon is going down)."""
        with self.lock:
            live = [d for d in self.dynos.values() if d.live]
        grace = min(grace, self.settings.grace_seconds)
        threads = [
            threading.Thread(target=self.stop, args=(d, "platform shutting down", True, grace))
            for d in live
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.networks is not None:
            self.networks.shutdown()


@dataclass
class Held:
    """What a starting dyno has acquired (released whatever happens)."""

    fs: DynoFs | None = None
    namespace: Namespace | None = None
    token: str | None = None
    kept: KeptOutput | None = None  # a dyno that outlives the daemon: its output file


class Supervisor:
    """Keeps every app's formation running from its current release."""

    def __init__(
        self,
        manager: DynoManager,
        interval: float = 0.5,
        after_pass: Callable[[], None] | None = None,
    ):
        self.manager = manager
        self.interval = interval
        self.after_pass = after_pass  # the routing table, after every pass
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.crashes: dict[tuple[str, str], int] = {}  # (app, dyno name) -> restarts so far

    def poke(self, app: str | None = None) -> None:
        """Reconcile now (after a release or a scale)."""
        self.wake.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.reconcile()
            except Exception as exc:  # keep supervising whatever one app does
                self.manager.log(f"supervisor: {exc!r}")
            if self.after_pass is not None:
                self.after_pass()
            self.wake.wait(self.interval)
            self.wake.clear()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True, name="supervisor")
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def reconcile(self) -> None:
        m = self.manager
        for app in m.store.apps():
            name = app["name"]
            release = m.store.current_release(name)
            if release is None or release["slug"] is None:
                continue
            formation = {f["type"]: f for f in m.store.formation(name)}
            with m.lock:
                dynos = [d for d in m.dynos.values() if d.app == name and d.type != "run"]
            for d in dynos:
                if not d.live or d.stopping:
                    continue
                spec = formation.get(d.type)
                if spec is None or d.index > spec["quantity"]:
                    m.stop(d, "scaled down")
                elif d.release_version != release["version"] or d.size != spec["size"]:
                    m.stop(d, f"replaced by v{release['version']}")
            for kind, spec in formation.items():
                for i in range(1, spec["quantity"] + 1):
                    dyno_name = f"{kind}.{i}"
                    if any(d.name == dyno_name and d.stopping and d.live for d in dynos):
                        continue  # its predecessor still ends (and holds its port)
                    current = [
                        d for d in dynos if d.name == dyno_name and d.live and not d.stopping
                    ]
                    if current:
                        self._note_stable(name, current[0])
                        continue
                    last = max(
                        (d for d in dynos if d.name == dyno_name),
                        key=lambda d: d.started,
                        default=None,
                    )
                    if not self._may_start(name, last):
                        continue
                    dyno = m.start(
                        name, kind, spec["command"], size=spec["size"], env={}, name=dyno_name
                    )
                    if last is not None and last.state == "crashed":
                        dyno.restarts = last.restarts + 1

    def _note_stable(self, app: str, dyno: Dyno) -> None:
        if time.monotonic() - dyno.started > STABLE_SECONDS:
            self.crashes.pop((app, dyno.name), None)

    def _may_start(self, app: str, last: Dyno | None) -> bool:
        """A crashed dyno comes back at once the first time, then after 1, 2, 4 ... 60 s
        (the count resets once a dyno of that name has stayed up STABLE_SECONDS)."""
        if last is None or last.state != "crashed" or last.ended is None:
            return True
        key = (app, last.name)
        count = self.crashes.get(key, 0)
        delay = 0.0 if count == 0 else min(2.0 ** (count - 1), BACKOFF_MAX)
        if time.monotonic() < last.ended + delay:
            return False
        self.crashes[key] = count + 1
        return True


# --------------------------------------------------------------------------- /app


def _mount(source: str, target: Path, fstype: str, flags: int, options: str) -> bool:
    return (
        libc.mount(
            source.encode(),
            str(target).encode(),
            fstype.encode(),
            flags,
            ctypes.c_char_p(options.encode()),
        )
        == 0
    )


@dataclass
class DynoFs:
    """A dyno's writable storage: ``/app`` (an overlay over the slug), ``/tmp``,
    ``/build`` and ``/run/selfhost``, all on one bounded ``nosuid,nodev`` tmpfs (the
    weakened sandbox of the attack suite keeps the old plain directories)."""

    root: Path
    tmpfs: bool
    overlay: bool

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def ctl(self) -> Path:
        return self.root / "ctl"

    @classmethod
    def create(
        cls, root: Path, lower: Path, host_id: int, size: int, locked: security.Security
    ) -> DynoFs:
        root.mkdir(parents=True, mode=0o700)
        tmpfs = locked.hardened and _mount(
            "selfhost-dyno", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0700"
        )
        if locked.hardened and not tmpfs:
            shutil.rmtree(root, ignore_errors=True)
            raise EngineError(
                f"cannot mount the dyno's tmpfs at {root}",
                hint="the platform daemon must run as root",
            )
        fs = cls(root, tmpfs, overlay=False)
        upper, work = root / "upper", root / "work"
        for d in (upper, work, fs.app, fs.tmp, fs.build, fs.ctl):
            d.mkdir()
        fs.ctl.chmod(0o755)  # read-only for the dyno: the platform's marks
        hand_over_new(locked, host_id, upper, fs.tmp, fs.build)
        flags = MS_NOSUID | MS_NODEV if locked.hardened else 0
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        # An overlay costs about a millisecond whatever the slug's size; where overlays
        # cannot be mounted (no root, no overlayfs) the slug is copied instead.
        fs.overlay = _mount("overlay", fs.app, "overlay", flags, options)
        if not fs.overlay:
            fs.app.rmdir()
            subprocess.run(["cp", "-a", "--", str(lower), str(fs.app)], check=True)
        return fs

    def remove(self) -> None:
        """Unmount and delete (everything the dyno wrote goes with the tmpfs)."""
        if self.overlay:
            libc.umount2(str(self.app).encode(), MNT_DETACH)
        if self.tmpfs:
            libc.umount2(str(self.root).encode(), MNT_DETACH)
        shutil.rmtree(self.root, ignore_errors=True)


def release_stale_dynos(dynos_dir: Path, keep: frozenset[str] = frozenset()) -> None:
    """Unmount and delete what a killed daemon left in ``dynos/``, but for the dynos
    in ``keep`` (by id: those the new daemon adopts)."""
    prefix = str(dynos_dir) + "/"
    kept = tuple(f"{prefix}{ident}" for ident in keep)
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        targets = [line.split()[1].replace("\\040", " ") for line in f]
    stale = (t for t in targets if t.startswith(prefix) and not t.startswith(kept))
    for target in sorted(stale, reverse=True):
        libc.umount2(target.encode(), MNT_DETACH)
    if not dynos_dir.is_dir():
        return
    for entry in dynos_dir.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
