"""Benchmark: the router against the same web dyno reached directly, in one run.

A platform in a temporary directory runs ``examples/tcc-web`` (a C server run by the
bootstrapped tcc) as app ``bench``; ``wrk`` drives it. It prints:

- **throughput and latency**: requests/s, p50 and p99 for a small response at 1, 8 and
  64 connections, straight to the dyno's port and through the router, and router ÷
  direct (goals: at least half the direct throughput; p99 at most 2 ms more at 8); the
  same router with one worker process beside it (``router1w``: what the workers add); with
  Debian's ``haproxy`` installed, a bare HAProxy in front of the same dyno as well (the
  reference a proxy in C gives here, without the router's features); and the CPU each path's
  processes spend per request, user + system (the router's workers; for the direct path,
  the app's own server);
- **failover**: web=3, 8 clients sending GETs, one dyno killed (``kill -9``): the
  failed requests (goal: 0) and how long the dead dyno stayed in the rotation;
- **cold start**: with ``SELFHOST_AUTOSTART=1`` at ``web=0``, a request's latency
  against a warm request's, and minus the app's own time from start to listening
  (goal: at most 50 ms).

    apt-get install wrk   (./setup --dev installs it)
    .venv/bin/python bench/router.py [--seconds 3] [--rounds 3] [--cold 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from common import REPO, platform_invoke

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


cli = platform_invoke


def routed(platform: Path) -> list[dict[str, Any]]:
    info = json.loads((platform / "router.json").read_text())
    with urllib.request.urlopen(info["url"] + "/router", timeout=5) as resp:
        state = json.loads(resp.read())
    return [d for d in state["apps"].get("bench", {}).get("dynos", []) if d["routable"]]


def routed_state(platform: Path) -> Any:
    info = json.loads((platform / "router.json").read_text())
    with urllib.request.urlopen(info["url"] + "/router", timeout=5) as resp:
        return json.loads(resp.read())


def wait_for(check, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def cpu_seconds(pids: Iterable[int]) -> tuple[float, float]:
    """User and system CPU seconds the processes ``pids`` have used so far."""
    hz = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / hz, system / hz


def wrk(
    url: str, connections: int, seconds: float, host: str | None, cpu: Sequence[int] = ()
) -> dict[str, float]:
    """wrk's numbers, and the CPU per request (ms) of the processes ``cpu``."""
    argv = ["wrk", "-t", str(min(2, connections)), "-c", str(connections)]
    argv += ["-d", f"{seconds:g}s", "--latency", "--timeout", "10s"]
    if host:
        argv += ["-H", f"Host: {host}"]
    before = cpu_seconds(cpu)
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    after = cpu_seconds(cpu)

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match.group(1)) * UNITS[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    assert rps and total, out
    done = max(1, int(total.group(1)))
    return {
        "user": (after[0] - before[0]) * 1000 / done,
        "sys": (after[1] - before[1]) * 1000 / done,
        "rps": float(rps.group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def get(port: int, timeout: float = 30) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", headers={"Host": f"bench.localhost:{port}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def server_process(pid: int) -> int:
    from selfhost.stages.cgroups import descendants

    below = descendants(pid)
    return below[-1] if below else pid


HAPROXY = """\
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-server-close
frontend bench
    bind 127.0.0.1:{listen}
    default_backend dyno
backend dyno
    server web1 127.0.0.1:{port}
"""


def haproxy(work: Path, dyno_port: int) -> tuple[subprocess.Popen[bytes], int] | None:
    """HAProxy (Debian's, if installed) in front of the same dyno: the reference a
    proxy written in C gives on this machine. A bare config, none of the router's
    features."""
    if not shutil.which("haproxy"):
        return None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        listen = s.getsockname()[1]
    config = work / "haproxy.cfg"
    config.write_text(HAPROXY.format(listen=listen, port=dyno_port))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
    wait_for(lambda: get(listen, timeout=1) == 200, 10, "haproxy")
    return proc, listen


def one_worker_router(platform: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A second router on the same platform with one worker process: what the router's
    workers add, in the same run."""
    import sys

    record = platform.parent / "router-1.json"
    argv = [sys.executable, "-m", "selfhost.platform.router.service", "--dir", str(platform)]
    argv += ["--workers", "1", "--record", str(record)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL)
    wait_for(record.exists, 20, "the one-worker router")
    port = int(json.loads(record.read_text())["port"])
    wait_for(lambda: get(port, timeout=1) == 200, 10, "the one-worker router's answer")
    return proc, port


def throughput(platform: Path, router_port: int, seconds: float, rounds: int = 3) -> None:
    cli(platform, "scale", "--app", "bench", "web=1")
    dyno = wait_for(lambda: routed(platform), 120, "a routable web dyno")[0]
    host = f"bench.localhost:{router_port}"
    record = json.loads((platform / "router.json").read_text())
    workers = record["workers"]
    from selfhost.stages.cgroups import descendants

    # name -> (url, Host header, the processes whose CPU per request is shown: the
    # dyno's server for the direct path, the router's processes, HAProxy)
    paths: dict[str, tuple[str, str | None, list[int]]] = {
        "direct": (f"http://127.0.0.1:{dyno['port']}/", None, [server_process(dyno["pid"])]),
        "router": (
            f"http://127.0.0.1:{router_port}/",
            host,
            [record["pid"], *descendants(record["pid"])],
        ),
    }
    single, single_port = one_worker_router(platform)
    paths["router1w"] = (
        f"http://127.0.0.1:{single_port}/",
        f"bench.localhost:{single_port}",
        [single.pid, *descendants(single.pid)],
    )
    reference = haproxy(platform.parent, dyno["port"])
    if reference:
        paths["haproxy"] = (f"http://127.0.0.1:{reference[1]}/", None, [reference[0].pid])
    try:
        for url, header, _ in paths.values():
            wrk(url, 8, 1, header)  # warm each
        print(
            f"connections  path       requests/s     p50       p99     errors   CPU (user + sys; "
            "direct: the app's server; else the proxy's processes)\n(median of "
            f"{rounds}; router: {workers} workers; router1w: the same with one"
            f"{'; haproxy: the reference, not the router' if reference else ''})"
        )
        for connections in (1, 8, 64):
            # every path in turn, `rounds` times: this machine's steal time and
            # neighbours move single runs by a third; medians of alternated runs do not
            runs = [
                {
                    name: wrk(url, connections, seconds, header, pids)
                    for name, (url, header, pids) in paths.items()
                }
                for _ in range(rounds)
            ]
            got = {
                name: {k: statistics.median(r[name][k] for r in runs) for k in runs[0][name]}
                for name in paths
            }
            for name, r in got.items():
                print(
                    f"{connections:>11}  {name:<8}  {r['rps']:>10.0f}  {r['p50'] * 1000:7.2f} ms "
                    f"{r['p99'] * 1000:7.2f} ms  {r['errors']:>5.0f}   CPU/request "
                    f"{r['user']:.3f} + {r['sys']:.3f} ms"
                )
            a = got["direct"]
            for name in [n for n in got if n != "direct"]:
                b = got[name]
                print(
                    f"{'':>11}  {name}/direct: throughput {b['rps'] / a['rps']:.2f} "
                    f"(goal >= 0.5), p99 +{(b['p99'] - a['p99']) * 1000:.2f} ms"
                    + (" (goal <= 2 ms)" if connections == 8 else "")
                )
    finally:
        single.terminate()
        single.wait()
        if reference:
            reference[0].terminate()
            reference[0].wait()


def failover(platform: Path, router_port: int) -> None:
    cli(platform, "scale", "--app", "bench", "web=3")
    dynos = wait_for(lambda: len(routed(platform)) == 3 and routed(platform), 120, "web=3")
    failures: list[float] = []
    served = [0]
    stop = time.monotonic() + 6

    def client() -> None:
        while time.monotonic() < stop:
            if get(router_port) != 200:
                failures.append(time.monotonic())
            else:
                served[0] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    victim = dynos[0]
    killed = time.monotonic()
    os.kill(server_process(victim["pid"]), signal.SIGKILL)
    wait_for(lambda: victim["id"] not in {d["id"] for d in routed(platform)}, 10, "it left")
    left = time.monotonic() - killed
    for t in threads:
        t.join()
    last = f"{(max(failures) - killed) * 1000:.0f} ms after the kill" if failures else "none"
    print(
        f"failover: {served[0]} requests served, {len(failures)} failed (goal 0; last: {last}); "
        f"the dead dyno left the rotation {left * 1000:.0f} ms after kill -9 "
        "(as seen by polling the router's state)"
    )


def stamp(line: str) -> float:
    return datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()


def cold_start(platform: Path, router_port: int, rounds: int) -> None:
    cli(platform, "config", "--app", "bench", "SELFHOST_AUTOSTART=1")
    warm = []
    for _ in range(20):
        t = time.perf_counter()
        get(router_port)
        warm.append(time.perf_counter() - t)
    cold, own = [], []
    log = platform / "logs" / "bench.log"
    for _ in range(rounds):
        cli(platform, "scale", "--app", "bench", "web=0")
        wait_for(lambda: not routed(platform) and not list_dynos(platform), 60, "web=0")
        mark = log.stat().st_size
        t = time.perf_counter()
        status = get(router_port, timeout=90)
        cold.append(time.perf_counter() - t)
        if status != 200:
            state = routed_state(platform)
            table = (platform / "routes.json").read_text()
            raise SystemExit(
                f"the cold request got {status}:\n{log.read_text()[mark:]}\n"
                f"router: {state}\nroutes.json: {table}"
            )
        # the daemon follows the dyno's output into the log a moment after it was written
        text = wait_for(
            lambda at=mark: "tcc-web: listening on" in (t := log.read_text()[at:]) and t,
            10,
            "the dyno's 'listening' line in the log",
        )
        starting = [ln for ln in text.splitlines() if "Starting process with command" in ln]
        listening = [ln for ln in text.splitlines() if "tcc-web: listening on" in ln]
        own.append(stamp(listening[0]) - stamp(starting[0]))
    median = statistics.median
    overhead = [c - o for c, o in zip(cold, own, strict=True)]
    print(
        f"cold start (autostart, web=0): {median(cold) * 1000:.0f} ms median; warm request "
        f"{median(warm) * 1000:.2f} ms (cold/warm {median(cold) / median(warm):.0f}x); the "
        f"app's own start to listening {median(own) * 1000:.0f} ms; cold minus that "
        f"{median(overhead) * 1000:.0f} ms (goal <= 50 ms)"
    )


def list_dynos(platform: Path) -> list[Any]:
    out = cli(platform, "ps", "--app", "bench", "--json").stdout
    return [d for d in json.loads(out) if d["type"] == "web" and d["state"] in ("up", "starting")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk (./setup --dev installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        platform = Path(tmp) / "platform"
        try:
            cli(platform, "release", "--app", "bench", "--app-dir", str(REPO / "examples/tcc-web"))
            router_port = json.loads((platform / "router.json").read_text())["port"]
            throughput(platform, router_port, args.seconds, args.rounds)
            failover(platform, router_port)
            cold_start(platform, router_port, args.cold)
        finally:
            cli(platform, "platform.down")


if __name__ == "__main__":
    main()
