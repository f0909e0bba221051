"""The platform daemon: one local process serving the API (and, later, supervising dynos).

Started the way users start it: ``invoke platform.up`` (or on demand by any task that
needs it) runs ``python -m selfhost.platform.daemon`` in the background with its own
session; it binds to loopback, writes ``daemon.json`` (``{"pid", "url", "started"}``)
once it answers, logs to ``daemon.log`` and stops cleanly on SIGTERM
(``invoke platform.down``). ``daemon.json`` left behind by a killed daemon is detected
(dead pid, or a health check that fails) and ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from selfhost.errors import PlatformError
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.runtime.dynos import DynoSettings
from selfhost.stages.manifest import write_json_atomic
from selfhost.workspace import file_lock

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class DaemonInfo:
    """A running daemon."""

    pid: int
    url: str
    started: float


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def running(paths: PlatformPaths) -> DaemonInfo | None:
    """The daemon serving this platform directory, if one is up and answering."""
    try:
        data = json.loads(paths.daemon_json.read_text())
        info = DaemonInfo(int(data["pid"]), str(data["url"]), float(data["started"]))
    except (OSError, ValueError, KeyError):
        return None
    if not _alive(info.pid) or not _healthy(info.url):
        return None
    return info


def start(
    paths: PlatformPaths,
    *,
    port: int,
    stack: str,
    max_blob_bytes: int,
    dynos: DynoSettings | None = None,
    queue: str | None = None,
) -> tuple[DaemonInfo, bool]:
    """Return the running daemon, starting it first if needed; the bool says if it was.

    ``dynos`` (written to ``settings.json``) lets the daemon run dynos: where stacks
    are, which engine, the grace period.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    with file_lock(paths.lock, wait=START_TIMEOUT, what="the platform daemon"):
        info = running(paths)
        if info:
            return info, False
        paths.daemon_json.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "selfhost.platform.daemon",
            "--dir",
            str(paths.root),
            "--port",
            str(port),
            "--stack",
            stack,
            "--max-blob-bytes",
            str(max_blob_bytes),
        ]
        if queue:
            argv += ["--queue", queue]
        if dynos is not None:
            dynos.write(paths.settings)
            argv += ["--settings", str(paths.settings)]
        with open(paths.log, "ab") as log:
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
                tail = paths.log.read_text(errors="replace").splitlines()[-10:]
                raise PlatformError(
                    f"the platform daemon exited with code {proc.returncode}",
                    details="\n".join(f"  | {line}" for line in tail),
                    hint=f"see {paths.log}" + (f"; is port {port} in use?" if port else ""),
                )
            info = running(paths)
            if info:
                return info, True
            time.sleep(0.05)
        proc.kill()
        raise PlatformError(
            f"the platform daemon did not answer within {START_TIMEOUT:.0f}s",
            hint=f"see {paths.log}",
        )


def stop(paths: PlatformPaths) -> DaemonInfo | None:
    """Stop the daemon (SIGTERM, then SIGKILL after a grace period); return what ran."""
    try:
        data = json.loads(paths.daemon_json.read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError):
        return None
    if not _alive(pid):
        paths.daemon_json.unlink(missing_ok=True)
        paths.pid_file.unlink(missing_ok=True)
        return None
    info = DaemonInfo(pid, data.get("url", ""), float(data.get("started", 0)))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths.daemon_json.unlink(missing_ok=True)
    paths.pid_file.unlink(missing_ok=True)
    return info


def main(argv: list[str] | None = None) -> int:
    """The daemon's entry point (``python -m selfhost.platform.daemon``)."""
    from selfhost.archive import Limits as ArchiveLimits
    from selfhost.platform.api import dynos as dyno_api
    from selfhost.platform.api import jobs as job_api
    from selfhost.platform.api.server import PlatformServer, listen
    from selfhost.platform.api.web import Endpoint
    from selfhost.platform.jobs.service import JobService
    from selfhost.platform.router.table import RoutePublisher
    from selfhost.platform.runtime.dynos import DynoManager, Supervisor
    from selfhost.platform.runtime.rendezvous import Rendezvous
    from selfhost.platform.slugs.slug import UNPACK_LIMITS
    from selfhost.platform.store.db import Store
    from selfhost.platform.tls import Authority

    parser = argparse.ArgumentParser(prog="selfhost.platform.daemon")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stack", default="bookworm")
    parser.add_argument("--max-blob-bytes", type=int, default=500_000_000)
    parser.add_argument("--settings", type=Path, help="dyno settings (JSON); no dynos without")
    parser.add_argument(
        "--queue",
        help="the default job queue URL (sqlite:// or redis://); "
        "default: queue/jobs.db in the platform directory",
    )
    args = parser.parse_args(argv)
    os.umask(0o077)  # the platform's state is private (docs/security.md)
    # Requests, dyno lifecycles and output pumps are threads: hand the interpreter
    # over after 1 ms rather than 5, or a dyno's start waits on a busy request.
    sys.setswitchinterval(0.001)
    paths = PlatformPaths(args.dir)
    paths.ensure_private()
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock:
            sys.stdout.write(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line + "\n")
            sys.stdout.flush()

    # With --port 0, reuse the port of the previous run when it is free, so URLs handed
    # out before a restart (blob URLs, the API URL in scripts) keep working.
    port_file = paths.port_file
    port = args.port
    if port == 0:
        with contextlib.suppress(OSError, ValueError):
            port = int(port_file.read_text())
    settings = DynoSettings.read(args.settings) if args.settings else None
    limits = (
        ArchiveLimits(settings.slug_max_unpacked_bytes, settings.slug_max_files)
        if settings
        else UNPACK_LIMITS
    )
    try:
        sock = listen(args.host, port)
    except OSError:
        if args.port != 0 or port == 0:
            raise
        sock = listen(args.host, 0)
    host, bound = sock.getsockname()[:2]
    api_url = f"http://{host}:{bound}"
    port_file.write_text(f"{bound}\n")
    store = Store(paths)
    endpoints: list[Endpoint] = []
    supervisor = None
    routes = None
    manager = None
    jobs = None
    rendezvous = None
    if settings:
        manager = DynoManager(store, paths, settings, api_port=lambda: int(bound), log=log)
        routes = RoutePublisher(manager, paths.routes, api_url)  # the router's table
        manager.observe(routes)
        supervisor = Supervisor(manager, after_pass=routes.safely)
        # heroku run: attached dynos are reached over TLS (the platform's own authority)
        authority = Authority.ensure(paths.tls, sorted({args.host, "127.0.0.1", "localhost"}))
        rendezvous = Rendezvous(authority, manager.attachable, host=args.host, log=log)
        jobs = JobService(
            store,
            paths,
            manager,
            api_url=lambda: api_url,
            default_queue=args.queue,
            queues=manager.settings.queues,
            log=log,
            on_release=supervisor.poke,
        )
        manager.observe(jobs)  # compile workers get their queue, and jobs come back
        adopted = manager.adopt()  # the dynos a killed daemon left running
        if adopted:
            log(f"adopted {adopted} dyno(s) left running by the previous daemon")
        endpoints = [
            *dyno_api.endpoints(manager, supervisor, rendezvous),
            *job_api.endpoints(jobs),
        ]

    def changed(app: str) -> None:
        """A release, rollback, scale or config change: the router learns of it before
        the API answers (autostart, web=0), the supervisor acts on it at once."""
        if routes is not None:
            routes.safely()
        if supervisor is not None:
            supervisor.poke(app)

    server = PlatformServer(
        sock,
        paths,
        stack=args.stack,
        max_blob_bytes=args.max_blob_bytes,
        store=store,
        endpoints=endpoints,
        on_change=changed if supervisor else None,
        retire=(lambda app: manager.retire(app, "app destroyed")) if manager else None,
        log=log,
        unpack_limits=limits,
    )
    if rendezvous and supervisor and jobs:
        rendezvous.start()
        supervisor.start()
        jobs.start()
    stopping = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            log(f"signal {signum}: shutting down")
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    paths.pid_file.write_text(f"{os.getpid()}\n")
    write_json_atomic(
        paths.daemon_json, {"pid": os.getpid(), "url": server.url, "started": time.time()}
    )
    log(f"platform daemon {os.getpid()} serving {server.url} from {paths.root}")
    try:
        server.serve_forever()
    finally:
        if jobs:
            jobs.stop()
        if supervisor and manager:
            supervisor.stop()
            manager.shutdown()
        if rendezvous:
            rendezvous.stop()
        server.server_close()
        try:
            if json.loads(paths.daemon_json.read_text()).get("pid") == os.getpid():
                paths.daemon_json.unlink()
                paths.pid_file.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
