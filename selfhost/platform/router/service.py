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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from selfhost.errors import PlatformError
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.runtime import probe
from selfhost.stages.manifest import write_json_atomic
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
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and probe.alive(info.pid):
            time.sleep(0.05)
        if probe.alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
    paths.router_json.unlink(missing_ok=True)
    return info


def main(argv: list[str] | None = None) -> int:
    """``python -m selfhost.platform.router.service --dir PLATFORM --port N``"""
    from selfhost.platform.router.proxy import Router, RouterSettings

    parser = argparse.ArgumentParser(prog="selfhost.platform.router.service")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument(
        "--no-failover",
        action="store_true",
        help="a weakened router for the tests: no health probe, no retry",
    )
    args = parser.parse_args(argv)
    paths = PlatformPaths(args.dir)

    def log(line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(f"{stamp} {line}", flush=True)

    async def serve() -> None:
        router = Router(
            paths,
            RouterSettings(
                request_timeout=args.request_timeout,
                domain=args.domain,
                failover=not args.no_failover,
            ),
            log=log,
        )
        runner = await router.start(args.host, args.port)
        # Fewer, smaller collections: what start-up made is frozen out of every one, and
        # the first generation fills 10x slower (each request makes a few dozen objects,
        # nearly none in cycles); a full collection was a latency spike under load.
        gc.freeze()
        gc.set_threshold(7000, 20, 100)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        url = f"http://{args.host}:{router.port}"
        write_json_atomic(paths.router_json, {"pid": os.getpid(), "url": url, "port": router.port})
        log(f"router {os.getpid()} serving http://APP.{args.domain}:{router.port}/")
        await stopping.wait()
        log("stopping")
        await router.close(runner)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(paths.router_json.read_text()).get("pid") == os.getpid():
                paths.router_json.unlink()

    import uvloop  # libuv's event loop: bench/router.py measures what it gives

    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
