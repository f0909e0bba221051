"""Your app on your runtime: the slug ships the proven final stage, with the user's app,
released through the API and answering HTTP in web dynos."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from selfhost.platform.client import PlatformClient
from tests.integration.conftest import REPO, Run, invoke


def test_the_slug_ships_the_bootstrap_final_stage_without_rebuilding(tcc_run, tcc_slug):
    ws, run = tcc_run
    _, slug = tcc_slug
    final = run.json["stages"][-1]
    # invoke slug after invoke bootstrap: every stage a cache hit, the same final stage
    assert [s["cached"] for s in slug["stages"]] == [True, True, True], slug["stages"]
    assert [s["input_hash"] for s in slug["stages"]] == [
        s["input_hash"] for s in run.json["stages"]
    ]
    assert slug["input_hash"] == final["input_hash"]
    assert slug["tree_digest"] == final["tree_digest"]
    # byte for byte: every file of the final stage's manifest is in the slug as recorded
    manifest = json.loads(Path(final["manifest"]).read_text())
    with tarfile.open(slug["path"]) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        for path, entry in manifest["files"].items():
            member = members[path]
            assert f"{member.mode & 0o7777:04o}" == entry["mode"], path
            if entry["type"] == "file":
                data = tar.extractfile(member).read()
                assert hashlib.sha256(data).hexdigest() == entry["sha256"], path
            elif entry["type"] == "symlink":
                assert member.linkname == entry["target"], path
        meta = json.loads(tar.extractfile("./app/selfhost.json").read())
    assert meta["tree_digest"] == final["tree_digest"] and meta["app"] == "platform"
    # the bootstrap's stages are still what diff-stages compares
    link = ws / "stages" / "tcc" / "stage3"
    assert link.resolve() == Path(final["manifest"]).parent.resolve()


def get(port: int, path: str = "/", timeout: float = 5) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = conn.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def web_dynos_answer(
    cli: Callable[..., Run], root: Path, app: str, count: int, expect: str, timeout: float = 180
) -> list[str]:
    """Scale web to ``count``; each web dyno's port answers a GET with ``expect``."""
    assert cli("scale", "--app", app, f"web={count}").code == 0
    info = json.loads((root / "daemon.json").read_text())
    client = PlatformClient(info["url"], (root / "token").read_text().strip())

    def up() -> list[dict[str, Any]]:
        dynos = [d for d in client.dynos(app) if d["type"] == "web" and d["state"] == "up"]
        return dynos if len(dynos) == count else []

    dynos = wait_for(up, timeout, f"{count} web dynos of {app}")
    bodies = []
    for dyno in dynos:
        page = wait_for(
            lambda d=dyno: (lambda text: text if "200 OK" in text else None)(get(d["port"])),
            timeout,
            f"{dyno['name']} answering on port {dyno['port']}",
        )
        assert expect in page and dyno["name"] in page, page
        bodies.append(page)
    return bodies


@pytest.fixture
def local_platform(tcc_run, stacks, tmp_path):
    ws, _ = tcc_run
    env = {
        "INVOKE_SELFHOST_PLATFORM_DIR": str(tmp_path / "platform"),
        # the router's H12 and a frozen dyno's replacement, in seconds rather than 30
        "INVOKE_SELFHOST_ROUTER_TIMEOUT": "3",
        "INVOKE_SELFHOST_DYNO_GRACE_SECONDS": "2",
        "INVOKE_SELFHOST_DYNO_BOOT_TIMEOUT": "3",  # R10 in 3 s rather than 60
    }

    def cli(*args: str, timeout: float = 900) -> Run:
        return invoke(list(args), ws, stacks, timeout=timeout, **env)

    cli.root = tmp_path / "platform"  # type: ignore[attr-defined]
    yield cli
    cli("platform.down")


def test_a_users_web_app_on_the_bootstrapped_tcc(local_platform, tmp_path):
    cli = local_platform
    released = cli(
        "release", "--app", "tcc-web", "--app-dir", str(REPO / "examples/tcc-web"), "--json"
    )
    assert released.code == 0, released.output
    assert released.json["process_types"] == {"web": "tcc -run server.c"}
    pages = web_dynos_answer(cli, cli.root, "tcc-web", 2, "Hello from tcc")
    assert len(pages) == 2 and "GET / HTTP/1.1" in pages[0]
    assert cli("scale", "--app", "tcc-web", "web=0").code == 0


def test_a_users_app_slug_holds_the_app_and_the_stage(tcc_run, stacks, tmp_path):
    ws, run = tcc_run
    out = tmp_path / "web.tgz"
    built = invoke(
        ["slug", "--app-dir", str(REPO / "examples/tcc-web"), "--out", str(out), "--json"],
        ws,
        stacks,
    )
    assert built.code == 0, built.output
    assert built.json["tree_digest"] == run.json["stages"][-1]["tree_digest"]
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        profile = tar.extractfile("./app/.profile.d/000-selfhost.sh").read().decode()
        meta = json.loads(tar.extractfile("./app/selfhost.json").read())
    assert {"./app/server.c", "./app/Procfile", "./app/vendor/tcc/bin/tcc"} <= names
    assert "./app/README.md" not in names, "the app's .slugignore is honoured"
    assert not any(n.startswith(("./app/vendor/python", "./app/bin/worker")) for n in names)
    assert 'PATH="/app/vendor/tcc/bin:' in profile and "LD_LIBRARY_PATH" in profile
    assert meta["app"] == "user" and meta["runs_on"]["suite"] == "bookworm"
    # an app directory without a Procfile is refused, with the reason
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = invoke(["slug", "--app-dir", str(empty)], ws, stacks)
    assert bad.code != 0 and "has no Procfile" in bad.stderr and "Traceback" not in bad.output


def test_release_a_slug_file_built_elsewhere(local_platform, tcc_slug):
    cli = local_platform
    _, slug = tcc_slug
    run = cli("release", "--app", "prebuilt", "--slug", slug["path"], "--json")
    assert run.code == 0, run.output
    assert run.json["version"] == 1
    assert run.json["checksum"] == slug["checksum"]
    wrong = cli("release", "--app", "prebuilt", "--slug", slug["path"], "--app-dir", ".")
    assert wrong.code == 2 and "--slug releases a slug as it is" in wrong.stderr, wrong.output
    missing = cli("release", "--app", "prebuilt", "--slug", "/nonexistent.tgz")
    assert missing.code != 0 and "Traceback" not in missing.output
    assert "/nonexistent.tgz" in missing.stderr, missing.output


def router_get(port: int, app: str, path: str = "/", timeout: float = 30) -> tuple[int, str]:
    """GET through the router, the way a browser asks for http://APP.localhost:PORT/."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": f"{app}.localhost:{port}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def routed(root: Path, app: str) -> dict[str, dict[str, Any]]:
    """The router's view of the app's web dynos, by name."""
    info = json.loads((root / "router.json").read_text())
    with urllib.request.urlopen(info["url"] + "/router", timeout=5) as resp:
        state = json.loads(resp.read())
    return {d["dyno"]: d for d in state["apps"].get(app, {}).get("dynos", [])}


def server_process(pid: int) -> int:
    """The web server's process in a dyno (tcc -run server.c): the deepest one."""
    from selfhost.stages.cgroups import descendants

    below = descendants(pid)
    return below[-1] if below else pid


def test_the_router_keeps_serving_through_kill_9_and_sigstop(local_platform):
    """web=3 behind the router: kill -9 one dyno's server and SIGSTOP another's during a
    steady stream of GETs; no request fails, and both are replaced."""
    cli = local_platform
    released = cli("release", "--app", "tcc-web", "--app-dir", str(REPO / "examples/tcc-web"))
    assert released.code == 0, released.output
    assert cli("scale", "--app", "tcc-web", "web=3").code == 0
    opened = cli("open", "--app", "tcc-web")
    assert opened.code == 0, opened.output
    url = opened.stdout.strip()
    assert url.startswith("http://tcc-web.localhost:") and url.endswith("/"), url
    port = int(url.rsplit(":", 1)[1].rstrip("/"))

    def all_routable() -> dict[str, dict[str, Any]]:
        state = routed(cli.root, "tcc-web")
        return state if len(state) == 3 and all(d["routable"] for d in state.values()) else {}

    before = wait_for(all_routable, 180, "3 routable web dynos")
    ps = cli("ps", "--app", "tcc-web", "--json")
    assert {d["routing"] for d in ps.json if d["type"] == "web"} == {"routable (0 in flight)"}

    failures: list[str] = []
    served: dict[str, int] = {}
    deadline = time.monotonic() + 8

    def client() -> None:
        while time.monotonic() < deadline:
            status, body = router_get(port, "tcc-web")
            if status != 200:
                failures.append(f"{status} {body[:200]}")
            else:
                name = body.split(" on ")[1].split(":")[0]
                served[name] = served.get(name, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    os.kill(server_process(before["web.1"]["pid"]), signal.SIGKILL)
    frozen = server_process(before["web.2"]["pid"])
    os.kill(frozen, signal.SIGSTOP)
    for t in threads:
        t.join()
    assert failures == [], failures[:5]
    assert sum(served.values()) > 50 and set(served) == {"web.1", "web.2", "web.3"}, served

    def replaced() -> dict[str, dict[str, Any]]:
        state = all_routable()
        renewed = state and all(state[n]["id"] != before[n]["id"] for n in ("web.1", "web.2"))
        return state if renewed else {}

    wait_for(replaced, 60, "web.1 and web.2 replaced and routable")
    log = cli("logs", "--app", "tcc-web", "--num", "1500").stdout
    assert 'heroku[router]: at=info method=GET path="/" host=tcc-web.localhost:' in log
    whole = (cli.root / "logs" / "tcc-web.log").read_text()
    assert "web.2 unresponsive: restarting it" in whole, whole[-3000:]

    # the data plane survives the control plane: kill -9 of the daemon fails no request,
    # and the restarted daemon adopts the same dynos
    serving = wait_for(all_routable, 60, "3 routable web dynos")
    failures.clear()
    served.clear()
    deadline = time.monotonic() + 6
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    os.kill(json.loads((cli.root / "daemon.json").read_text())["pid"], signal.SIGKILL)
    for t in threads:
        t.join()
    assert failures == [] and sum(served.values()) > 50, (failures[:5], served)
    assert cli("platform.up").code == 0
    ps = cli("ps", "--app", "tcc-web", "--json").json
    assert {d["id"] for d in ps if d["type"] == "web" and d["state"] == "up"} == {
        d["id"] for d in serving.values()
    }, ps

    # the router alone: down (the dynos stay), and up again (any task that makes sure
    # the platform runs starts it too)
    assert cli("router.down").code == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert cli("router.up").code == 0
    port = int(cli("open", "--app", "tcc-web").stdout.strip().rsplit(":", 1)[1].rstrip("/"))
    wait_for(all_routable, 30, "3 routable web dynos behind the new router")

    status, body = router_get(port, "tcc-web", "/sleep/10")
    assert status == 503 and "H12" in body, body
    assert cli("scale", "--app", "tcc-web", "web=0").code == 0
    wait_for(lambda: not routed(cli.root, "tcc-web"), 60, "no web dyno routed")
    status, body = router_get(port, "tcc-web")
    assert status == 503 and "H14" in body, body
    log = cli("logs", "--app", "tcc-web", "--num", "1500").stdout
    assert 'at=error code=H12 desc="Request timeout" method=GET path="/sleep/10"' in log
    assert 'at=error code=H14 desc="No web processes running"' in log

    # per-request dynos: at web=0 with autostart, a request starts one and is held
    assert (
        cli("config", "--app", "tcc-web", "SELFHOST_AUTOSTART=1", "SELFHOST_IDLE_SECONDS=2").code
        == 0
    )
    started = time.monotonic()
    status, body = router_get(port, "tcc-web")
    cold = time.monotonic() - started
    assert status == 200 and "Hello from tcc" in body, (status, body)
    assert cold < 20, cold
    wait_for(lambda: not routed(cli.root, "tcc-web"), 30, "the idle dyno stopped")
    whole = (cli.root / "logs" / "tcc-web.log").read_text()
    assert 'at=info desc="autostart: web=1"' in whole
    assert 'at=info desc="idle for 2s: web=0"' in whole
    formation = cli("ps", "--app", "tcc-web", "--json").json
    assert not [d for d in formation if d["type"] == "web" and d["state"] == "up"], formation


def test_a_web_dyno_that_does_not_bind_crashes_with_r10(local_platform, tmp_path):
    cli = local_platform
    app_dir = tmp_path / "nobind"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text("web: echo not listening; sleep 1000\n")
    released = cli("release", "--app", "nobind", "--app-dir", str(app_dir))
    assert released.code == 0, released.output
    url = cli("open", "--app", "nobind").stdout.strip()
    port = int(url.rsplit(":", 1)[1].rstrip("/"))
    status, body = router_get(port, "nobind")  # the dyno is up, but not routable
    assert status == 503 and "H10" in body, body

    def crashed() -> str:
        log = (cli.root / "logs" / "nobind.log").read_text()
        return log if "Error R10 (Boot timeout)" in log and "code=H10" in log else ""

    log = wait_for(crashed, 60, "R10")
    assert "Web process failed to bind to $PORT within 3 seconds of launch" in log
    assert "Stopping process with SIGKILL" in log
    assert 'heroku[router]: at=error code=H10 desc="App crashed"' in log
