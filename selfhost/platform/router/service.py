"""The router as a process: started with the platform (``invoke platform.up``) or alone
(``invoke router.up``), in a session of its own, so that the daemon's death does not
take it down; ``router.json`` in the platform directory says where it listens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from selfhost.errors import PlatformError
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.router.activity import Activity
from selfhost.platform.runtime import probe
from selfhost.platform.runtime.network import stop_process
from selfhost.stages.manifest import write_json_atomic
from selfhost.syscalls import PR_SET_PDEATHSIG, libc
from selfhost.workspace import file_lock

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class RouterInfo:
    pid: int
    url: str  # http://127.0.0.1:PORT
    port: int

    def app_url(self, app: str, domain: str = "localhost") -> str:
        return f"http://{app}.{domain}:{self.port}/"


def _recorded(paths: PlatformPaths) -> RouterInfo | None:
    """What ``router.json`` says, if it says it whole."""
    try:
        data = json.loads(paths.router_json.read_text())
        return RouterInfo(int(data["pid"]), str(data["url"]), int(data["port"]))
    except (OSError, ValueError, KeyError):
        return None


def state(info: RouterInfo, timeout: float = 2.0) -> dict | None:
    """The router's routing state (``GET /router``), or None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{info.url}/router", timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def running(paths: PlatformPaths) -> RouterInfo | None:
    info = _recorded(paths)
    # a zombie (its starter has not reaped it yet) is not alive
    if info is None or not probe.alive(info.pid) or state(info) is None:
        return None
    return info


def start(
    paths: PlatformPaths,
    *,
    port: int,
    host: str = "127.0.0.1",
    options: tuple[str, ...] = (),
) -> tuple[RouterInfo, bool]:
    """The running router, started first if needed; the bool says if it was."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with file_lock(paths.root / "router.lock", wait=START_TIMEOUT, what="the router"):
        info = running(paths)
        if info:
            return info, False
        paths.router_json.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "selfhost.platform.router.service",
            "--dir",
            str(paths.root),
            "--host",
            host,
            "--port",
            str(port),
            *options,
        ]
        with open(paths.router_log, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = paths.router_log.read_text(errors="replace").splitlines()[-10:]
                raise PlatformError(
                    f"the router exited with code {proc.returncode}",
                    details="\n".join(f"  | {line}" for line in tail),
                    hint=f"see {paths.router_log}; is port {port} in use? "
                    "(selfhost.router_port, e.g. INVOKE_SELFHOST_ROUTER_PORT=5081)",
                )
            info = running(paths)
            if info:
                return info, True
            time.sleep(0.05)
        proc.kill()
        raise PlatformError(
            f"the router did not answer within {START_TIMEOUT:.0f}s",
            hint=f"see {paths.router_log}",
        )


def stop(paths: PlatformPaths) -> RouterInfo | None:
    """Stop the router (SIGTERM, then SIGKILL); return what ran."""
    info = _recorded(paths)
    if info is None:
        return None
    if probe.alive(info.pid):
        stop_process(info.pid, STOP_TIMEOUT)
    paths.router_json.unlink(missing_ok=True)
    return info


def default_workers() -> int:
    """One worker per core this process may run on, at most :data:`MAX_WORKERS`."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def listening_socket(host: str, port: int, *, shared: bool = True) -> socket.socket:
    """A socket listening on ``host:port``; ``shared``: one of the workers' group
    (``SO_REUSEPORT``: the kernel spreads new connections across the group)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Stop(Exception):
    """SIGTERM or SIGINT reached the router's parent."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    """``python -m selfhost.platform.router.service --dir PLATFORM --port N``

    The parent binds the port, forks the workers (each with its own listening socket
    on that port), writes ``router.json`` and starts again a worker that dies. A worker
    dies with the parent (``PR_SET_PDEATHSIG``): no orphan serves on beside a new
    router."""
    parser = argparse.ArgumentParser(prog="selfhost.platform.router.service")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument(
        "--workers", type=int, default=0, help="worker processes (0: one per core, at most 4)"
    )
    parser.add_argument(
        "--record",
        type=Path,
        help="where to write the router's pid, URL and port (default: router.json)",
    )
    parser.add_argument(
        "--no-failover",
        action="store_true",
        help="a weakened router for the tests: no health probe, no retry",
    )
    args = parser.parse_args(argv)
    paths = PlatformPaths(args.dir)
    record = args.record or paths.router_json
    workers = args.workers or default_workers()
    # the port is taken, or free and now ours: a plain bind tells (a group's would join
    # whatever else listens there with SO_REUSEPORT)
    with listening_socket(args.host, args.port, shared=False) as probe_socket:
        port = probe_socket.getsockname()[1]
    activity = Activity(workers)
    parent = os.getpid()
    children: dict[int, int] = {}  # pid -> worker index

    def spawn(index: int, sock: socket.socket) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker(args, paths, activity.as_worker(index), sock, parent)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)
        sock.close()  # the worker's now: a dead worker's queue must not wait for nobody
        children[pid] = index

    for index in range(workers):
        # each socket made just before its worker's fork: no worker holds another's
        # (a socket of the group that nobody accepts from would swallow connections)
        spawn(index, listening_socket(args.host, port))
    url = f"http://{args.host}:{port}"
    write_json_atomic(record, {"pid": parent, "url": url, "port": port, "workers": workers})
    _log(f"router {parent} serving http://APP.{args.domain}:{port}/ with {workers} workers")
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        while True:
            pid, status = os.wait()
            index = children.pop(pid, -1)
            if index < 0:
                continue
            _log(f"worker {index} (pid {pid}) ended ({_ended(status)}): starting it again")
            activity.forget_worker(index)
            time.sleep(0.5)  # a worker that dies at once is not restarted in a busy loop
            spawn(index, listening_socket(args.host, port))
    except _Stop:
        _log("stopping")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal: no half stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_workers(children)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()).get("pid") == parent:
                record.unlink()
    return 0


def _log(line: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} {line}", flush=True)


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def _stop_workers(children: dict[int, int]) -> None:
    """SIGTERM to every worker at once (each finishes what it serves), then each is
    waited for, SIGKILLed after :data:`STOP_TIMEOUT`, and reaped."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in children:
        stop_process(pid, grace=STOP_TIMEOUT)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _worker(
    args: argparse.Namespace,
    paths: PlatformPaths,
    activity: Activity,
    sock: socket.socket,
    parent: int,
) -> int:
    from selfhost.platform.router.proxy import Router, RouterSettings

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0 or os.getppid() != parent:
        return 0  # the parent is gone already
    me = f"worker {activity.worker}"

    def log(line: str) -> None:
        _log(f"{me}: {line}")

    async def serve() -> None:
        router = Router(
            paths,
            RouterSettings(
                request_timeout=args.request_timeout,
                domain=args.domain,
                failover=not args.no_failover,
            ),
            log=log,
            activity=activity,
        )
        runner = await router.start(sock)
        # Fewer, smaller collections: what start-up made is frozen out of every one, and
        # the first generation fills 10x slower (each request makes a few dozen objects,
        # nearly none in cycles); a full collection was a latency spike under load.
        gc.freeze()
        gc.set_threshold(7000, 20, 100)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        log(f"pid {os.getpid()} serving")
        await stopping.wait()
        await router.close(runner)

    import uvloop  # libuv's event loop: bench/router.py measures what it gives

    uvloop.run(serve())
    return 0


MAX_WORKERS = 4


if __name__ == "__main__":
    sys.exit(main())
