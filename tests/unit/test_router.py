"""The router against real web processes on this host (no dynos: the integration tests
have those): Host-based routing, balancing, failover, Heroku's error codes, its log."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from selfhost.platform.paths import PlatformPaths
from selfhost.platform.router import service
from selfhost.platform.router.proxy import new_request_id
from selfhost.platform.runtime import probe
from selfhost.stages.manifest import write_json_atomic

BACKEND = Path(__file__).with_name("web_backend.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Site:
    paths: PlatformPaths
    backends: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    info: service.RouterInfo | None = None
    serial: int = 0

    def backend(self, name: str) -> None:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(BACKEND), str(port), name])
        deadline = time.monotonic() + 10
        while not probe.listening(proc.pid, port):
            assert time.monotonic() < deadline, f"{name} did not listen"
            time.sleep(0.02)
        self.backends[name], self.ports[name] = proc, port

    def publish(self, web: int | None = None) -> None:
        """The routing table, as the daemon writes it: app hello has the backends, app
        empty is scaled to 0."""
        self.serial += 1
        backends = [
            {"dyno": n, "id": f"id-{n}", "port": self.ports[n], "pid": p.pid, "since": 0}
            for n, p in self.backends.items()
            if p.poll() is None
        ]
        quantity = len(self.backends) if web is None else web
        write_json_atomic(
            self.paths.routes,
            {
                "serial": self.serial,
                "api": "",
                "apps": {
                    "hello": {
                        "id": "app-id",
                        "web": quantity,
                        "autostart": False,
                        "idle": 300,
                        "backends": backends,
                    },
                    "empty": {"id": "e", "web": 0, "autostart": False, "idle": 1, "backends": []},
                },
            },
        )

    def start(self, *options: str) -> service.RouterInfo:
        self.info, _ = service.start(self.paths, port=0, options=options)
        return self.info

    def get(
        self,
        path: str = "/",
        app: str = "hello",
        timeout: float = 10,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        assert self.info is not None
        request = urllib.request.Request(
            self.info.url + path,
            headers={"Host": f"{app}.localhost:{self.info.port}", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log(self, app: str = "hello", *, holding: str = "") -> str:
        """The app's log, once it holds ``holding`` (the router writes every 100 ms)."""
        path = self.paths.logs / f"{app}.log"
        deadline = time.monotonic() + 5
        while True:
            text = path.read_text() if path.exists() else ""
            if holding in text or time.monotonic() > deadline:
                return text
            time.sleep(0.02)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    paths = PlatformPaths(tmp_path / "platform")
    paths.root.mkdir()
    paths.ensure_token()
    s = Site(paths)
    try:
        yield s
    finally:
        service.stop(paths)
        for proc in s.backends.values():
            with_kill(proc)


def with_kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait()


def test_routes_by_host_and_balances_and_logs(site: Site) -> None:
    for n in ("web.1", "web.2", "web.3"):
        site.backend(n)
    site.publish()
    site.start()
    answers = [site.get() for _ in range(30)]
    assert {status for status, _ in answers} == {200}
    counts = {n: sum(body == n for _, body in answers) for n in ("web.1", "web.2", "web.3")}
    assert all(c >= 5 for c in counts.values()), counts  # one at a time: they take turns
    status, body = site.get(app="nosuch")
    assert status == 404 and "nothing here" in body
    log = site.log(holding="dyno=web.2")
    assert 'heroku[router]: at=info method=GET path="/" host=hello.localhost:' in log
    assert "dyno=web.2" in log and "status=200 bytes=5 protocol=http" in log


def test_the_dyno_gets_herokus_request_headers(site: Site) -> None:
    """X-Forwarded-For (the client's, then its address), -Proto and -Port, X-Request-Id
    (a new UUID, or the client's own), X-Request-Start (ms since the epoch) and Via; the
    client's other headers, less hop-by-hop ones."""
    site.backend("web.1")
    site.publish()
    info = site.start()
    sent = {"X-Forwarded-For": "203.0.113.9", "X-Custom": "yes", "Keep-Alive": "timeout=5"}
    status, text = site.get("/headers", headers=sent)
    assert status == 200, text
    got = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    assert got["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert (got["X-Forwarded-Proto"], got["X-Forwarded-Port"]) == ("http", str(info.port))
    assert uuid.UUID(got["X-Request-Id"]).version == 4
    assert abs(int(got["X-Request-Start"]) - time.time() * 1000) < 60_000
    assert (got["Via"], got["X-Custom"], got["Host"]) == (
        "1.1 selfhost-router",
        "yes",
        f"hello.localhost:{info.port}",
    )
    assert "Keep-Alive" not in got and "Connection" not in got
    assert text.endswith("\n\n")  # the head ended where it should: nothing after it
    status, text = site.get("/headers", headers={"X-Request-Id": "from-the-client"})
    assert "X-Request-Id: from-the-client\n" in text


def steady_stream(site: Site, seconds: float, during) -> tuple[int, list[str]]:
    """GETs from 4 clients for ``seconds``; ``during`` runs after a third of it."""
    failures: list[str] = []
    done = 0
    deadline = time.monotonic() + seconds

    def client() -> int:
        n = 0
        while time.monotonic() < deadline:
            status, body = site.get("/", timeout=30)
            if status != 200:
                code = re.search(r"\(H\d\d", body)
                failures.append(f"{status} {code.group(0)[1:] if code else body[:80]}")
            n += 1
        return n

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        time.sleep(seconds / 3)
        during()
        done = sum(f.result() for f in futures)
    return done, failures


def kill_one_freeze_another(site: Site) -> None:
    site.backends["web.1"].kill()  # kill -9
    os.kill(site.backends["web.2"].pid, signal.SIGSTOP)


def test_kill_9_and_sigstop_during_traffic_fail_no_request(site: Site) -> None:
    for n in ("web.1", "web.2", "web.3"):
        site.backend(n)
    site.publish()
    site.start("--request-timeout", "3")
    done, failures = steady_stream(site, 4.5, lambda: kill_one_freeze_another(site))
    assert done > 100 and failures == [], (done, failures[:5])
    state = service.state(site.info)  # type: ignore[arg-type]
    routable = {d["dyno"]: d["routable"] for d in state["apps"]["hello"]["dynos"]}
    assert routable == {"web.1": False, "web.2": False, "web.3": True}


def test_without_failover_the_same_traffic_fails(site: Site) -> None:
    """The weakened router (no probe, no retry): the same events fail requests."""
    for n in ("web.1", "web.2", "web.3"):
        site.backend(n)
    site.publish()
    site.start("--request-timeout", "3", "--no-failover")
    done, failures = steady_stream(site, 4.5, lambda: kill_one_freeze_another(site))
    assert failures, done
    assert any("H12" in f for f in failures) and any("H13" in f for f in failures), failures[:5]


def test_h12_h14_h10(site: Site) -> None:
    site.backend("web.1")
    site.publish()
    site.start("--request-timeout", "1")
    status, body = site.get("/slow?s=3")
    assert status == 503 and "H12" in body
    h12 = 'at=error code=H12 desc="Request timeout" method=GET path="/slow?s=3"'
    assert h12 in site.log(holding=h12)
    status, body = site.get(app="empty")
    assert status == 503 and "H14" in body
    h14 = 'code=H14 desc="No web processes running"'
    assert h14 in site.log("empty", holding=h14)
    site.backends["web.1"].kill()
    site.backends["web.1"].wait()
    status, body = site.get()
    assert status == 503 and "H10" in body, body


def test_a_table_rewritten_within_one_clock_tick_is_still_read(tmp_path: Path) -> None:
    """Two writes of the same size in one tick into a reused inode have the same stat
    stamp: a request's stat misses the second, the watcher's read does not."""
    from selfhost.platform.router.proxy import Router

    paths = PlatformPaths(tmp_path / "platform")
    paths.root.mkdir()

    def table(serial: int, port: int) -> str:
        backend = {"dyno": "web.1", "id": "i", "port": port, "pid": 1, "since": 0}
        app = {"id": "a", "web": 1, "autostart": False, "idle": 300, "backends": [backend]}
        return json.dumps({"serial": serial, "api": "", "apps": {"hello": app}})

    paths.routes.write_text(table(1, 20000))
    router = Router(paths, log=lambda line: None)
    assert router.reload()
    st = os.stat(paths.routes)
    with open(paths.routes, "r+") as f:  # same inode, same size, then the same mtime
        f.write(table(2, 20001))
    os.utime(paths.routes, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not router.reload()  # the stamp cannot tell
    assert router.reload(look=True)
    assert router.table.serial == 2
    assert router.table.apps["hello"].backends[0].port == 20001
    assert not router.reload(look=True)  # nothing new


def test_workers_share_what_is_in_flight_across_processes() -> None:
    """A request counted by one worker process is seen by every other (shared memory
    mapped before the fork); a dead worker's count is dropped."""
    from selfhost.platform.router.activity import Activity

    activity = Activity(2)
    begun, ended = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # worker 1
        activity.as_worker(1).begin("hello")
        os.write(begun[1], b"x")
        os.read(ended[0], 1)
        os._exit(0)
    try:
        os.read(begun[0], 1)
        assert activity.in_flight("hello") == 1 and activity.in_flight("other") == 0
        assert time.monotonic() - activity.last_request("hello") < 5
        assert activity.last_request("other") == 0
        mine = activity.begin("hello")  # worker 0, this process
        assert activity.in_flight("hello") == 2
        activity.end(mine)
    finally:
        os.write(ended[1], b"x")
        os.waitpid(pid, 0)
    assert activity.in_flight("hello") == 1  # it never ended its request: it died
    activity.forget_worker(1)
    assert activity.in_flight("hello") == 0


def test_the_idle_stop_waits_for_another_workers_request(tmp_path: Path) -> None:
    """An autostarted app is scaled to 0 when idle, but not while another worker still
    serves a request for it (worker 0 alone saw none: it would have stopped it)."""
    import asyncio

    from selfhost.platform.router.activity import Activity
    from selfhost.platform.router.proxy import Router

    paths = PlatformPaths(tmp_path / "platform")
    paths.root.mkdir()
    app = {"id": "a", "web": 1, "autostart": True, "idle": 0.05, "backends": []}
    write_json_atomic(paths.routes, {"serial": 1, "api": "", "apps": {"hello": app}})
    activity = Activity(2)
    slow = activity.as_worker(1).begin("hello")  # worker 1 serves a long request
    router = Router(paths, log=lambda line: None, activity=activity.as_worker(0))
    router.reload()
    router.autostarted.add("hello")
    scaled: list[int] = []

    async def scale(app: str, quantity: int) -> int:
        scaled.append(quantity)
        return 200

    router._scale_web = scale  # type: ignore[method-assign]
    time.sleep(0.1)
    asyncio.run(router._stop_idle())
    assert scaled == [] and "hello" in router.autostarted  # busy elsewhere
    activity.as_worker(1).end(slow)
    activity.as_worker(0)
    asyncio.run(router._stop_idle())
    assert scaled == []  # it just ended: idle only after the app's idle time
    time.sleep(0.1)
    asyncio.run(router._stop_idle())
    assert scaled == [0] and "hello" not in router.autostarted


def test_the_choice_counts_every_workers_requests(tmp_path: Path) -> None:
    """Least outstanding across the router: worker 0 has sent nothing to either dyno,
    but worker 1 has two requests on web.1, so web.2 gets the next one."""
    from selfhost.platform.router.activity import Activity, dyno_key
    from selfhost.platform.router.proxy import Router

    paths = PlatformPaths(tmp_path / "platform")
    paths.root.mkdir()
    backends = [
        {"dyno": f"web.{n}", "id": f"id-{n}", "port": 1, "pid": os.getpid(), "since": 0}
        for n in (1, 2)
    ]
    app = {"id": "a", "web": 2, "autostart": False, "idle": 60, "backends": backends}
    write_json_atomic(paths.routes, {"serial": 1, "api": "", "apps": {"hello": app}})
    activity = Activity(2)
    router = Router(paths, log=lambda line: None, activity=activity.as_worker(0))
    router.reload()
    for live in router.live.values():
        live.routable = True
    router.live["id-1"].last_used = 0.0  # the one used longest ago: the tie-break's pick
    router.live["id-2"].last_used = 1.0
    route = router.table.apps["hello"]
    chosen = router.choose(route, set())
    assert chosen is not None and chosen.backend.dyno == "web.1"
    held = [activity.as_worker(1).begin(dyno_key("id-1")) for _ in range(2)]
    activity.as_worker(0)
    chosen = router.choose(route, set())
    assert chosen is not None and chosen.backend.dyno == "web.2"
    assert router.state()["apps"]["hello"]["dynos"][0]["in_flight"] == 2
    for i in held:
        activity.as_worker(1).end(i)
    activity.as_worker(0)
    chosen = router.choose(route, set())
    assert chosen is not None and chosen.backend.dyno == "web.1"


def worker_pids(site: Site, tries: int = 40) -> dict[int, int]:
    """Worker index -> pid, from the state that workers answer (each connection
    reaches one of them)."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        state = service.state(site.info)  # type: ignore[arg-type]
        if state:
            seen[state["worker"]] = state["pid"]
    return seen


def test_every_worker_reports_a_dynos_requests_in_flight_in_all_workers(site: Site) -> None:
    """What ``invoke ps`` shows: a request held by one worker is in flight on its dyno
    whichever worker answers ``GET /router``; only the holder counts it outstanding."""
    import threading

    site.backend("web.1")
    site.publish()
    site.start("--workers", "2")
    held = threading.Thread(target=site.get, args=("/slow?s=4",), daemon=True)
    held.start()
    seen: dict[int, tuple[int, int]] = {}  # worker -> (in flight, outstanding)
    deadline = time.monotonic() + 3
    while len(seen) < 2 and time.monotonic() < deadline:
        state = service.state(site.info)  # type: ignore[arg-type]
        if state and state["apps"]["hello"]["dynos"]:
            (dyno,) = state["apps"]["hello"]["dynos"]
            if dyno["in_flight"]:
                seen[state["worker"]] = (dyno["in_flight"], dyno["outstanding"])
    held.join(10)
    assert set(seen) == {0, 1}, seen
    assert sorted(seen.values()) == [(1, 0), (1, 1)], seen


def test_workers_serve_together_a_dead_one_comes_back_and_none_outlives_the_router(
    site: Site,
) -> None:
    site.backend("web.1")
    site.publish()
    info = site.start("--workers", "2")
    assert json.loads(site.paths.router_json.read_text())["workers"] == 2
    pids = worker_pids(site)
    assert set(pids) == {0, 1}, pids  # the kernel spread the connections over both
    assert all(site.get()[0] == 200 for _ in range(10))
    os.kill(pids[1], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (again := worker_pids(site, 20)).get(1) in (None, pids[1]):
        assert time.monotonic() < deadline, again
    assert again[0] == pids[0] and service.running(site.paths) == info  # the same router
    assert all(site.get()[0] == 200 for _ in range(10))
    os.kill(info.pid, signal.SIGKILL)  # the parent, without a word to its workers
    deadline = time.monotonic() + 5
    while any(probe.alive(pid) for pid in again.values()):
        assert time.monotonic() < deadline, "a worker outlived its router"
        time.sleep(0.05)


def test_a_request_id_is_a_random_version_4_uuid() -> None:
    """The router's own request ids (made without ``uuid.uuid4``, which is slower) are
    what ``str(uuid.uuid4())`` gives: version 4, RFC 4122 variant, canonical form."""
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert (str(parsed), parsed.version, parsed.variant) == (rid, 4, uuid.RFC_4122)
