"""Dynos on real sandboxes: one-off runs, limits, the formation supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from selfhost.platform.client import PlatformClient
from selfhost.platform.slugs.slug import SlugContents, pack
from tests.integration.conftest import Run, heroku_cli, invoke, start_invoke

GRACE = "2"


@pytest.fixture(scope="module")
def plat(tcc_slug, stacks, tmp_path_factory):
    """The tcc slug released as app 'dynos' on a platform of this module's own."""
    ws, _ = tcc_slug
    env = {
        "INVOKE_SELFHOST_PLATFORM_DIR": str(tmp_path_factory.mktemp("plat") / "platform"),
        "INVOKE_SELFHOST_DYNO_GRACE_SECONDS": GRACE,
    }
    released = invoke(["release", "--app", "dynos"], ws, stacks, **env)
    assert released.code == 0, released.output

    def cli(*args: str, timeout: float = 600, **extra: str) -> Run:
        return invoke(list(args), ws, stacks, timeout=timeout, **env, **extra)

    cli.env = env  # type: ignore[attr-defined]
    cli.ws = ws  # type: ignore[attr-defined]
    yield cli
    cli("platform.down")


def client_of(plat) -> PlatformClient:
    root = Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"])
    info = json.loads((root / "daemon.json").read_text())
    return PlatformClient(info["url"], (root / "token").read_text().strip())


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 42", 42),
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
    ],
)
def test_exit_codes_are_faithful(plat, script, code):
    run = plat("run", "--app", "dynos", "--", "sh", "-c", script)
    assert run.code == code, run.output


def test_environment_config_and_quoting(plat):
    assert plat("config", "--app", "dynos", "GREETING=hello world", "MODE=x").code == 0
    run = plat(
        "run",
        "--app",
        "dynos",
        "--env",
        "EXTRA=1",
        "--",
        "sh",
        "-c",
        'echo "$DYNO|$HOME|$GREETING|$MODE|$EXTRA|${PORT-none}|$SELFHOST_PREFIX"; '
        'printf "%s|" "$@"',
        "x",
        "two words",
        "it's",
    )
    assert run.code == 0, run.output
    first, second = run.stdout.splitlines()[:2]
    name, home, greeting, mode, extra, port, prefix = first.split("|")
    assert name.startswith("run.") and home == "/app" and greeting == "hello world"
    assert (mode, extra, port, prefix) == ("x", "1", "none", "/app/vendor/tcc")
    assert second == "two words|it's|", "every word arrives as it was typed"
    assert "Running `sh -c" in run.stderr and run.stderr.count("up, run.") == 1


def test_a_single_argument_is_a_shell_line(plat):
    """heroku run 'ls /app; cat /app/Procfile' runs the line through a shell."""
    run = plat("run", "--app", "dynos", "--", "ls /app; cat /app/Procfile; exit 7")
    assert run.code == 7, run.output
    assert "Procfile" in run.stdout and "worker: bin/worker" in run.stdout
    assert "Running `ls /app; cat /app/Procfile; exit 7`" in run.stderr


def test_the_slug_is_fresh_and_writable_each_time(plat):
    first = plat(
        "run",
        "--app",
        "dynos",
        "--",
        "sh",
        "-c",
        "test ! -e /app/scratch && echo x > /app/scratch && cat /app/scratch",
    )
    second = plat("run", "--app", "dynos", "--", "sh", "-c", "test ! -e /app/scratch")
    assert first.code == 0 and first.stdout.strip() == "x" and second.code == 0


def test_a_dyno_that_cannot_start_ends_with_the_reason(plat, tmp_path):
    """A slug that breaks while it is unpacked (here: its stored blob cut short, which
    tarfile reports with an EOFError) ends the dyno; it never stays 'starting'."""
    client = client_of(plat)
    client.create_app("broken", "bookworm")
    contents = SlugContents()
    contents.add_file("Procfile", data=b"worker: true\n")  # nothing starts by itself
    contents.add_file("big", data=os.urandom(200_000))
    info = pack(contents, tmp_path / "b.tgz", mtime=0, process_types={"worker": "true"})
    client.release_slug(
        "broken",
        info.path,
        checksum=info.checksum,
        size=info.size,
        process_types={"worker": "true"},
    )
    blob = Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"]) / "blobs/sha256" / info.sha256
    blob.write_bytes(blob.read_bytes()[:5000])
    started = time.monotonic()
    run = plat("run", "--app", "broken", "--ttl", "30", "--", "true")
    assert run.code == 127, run.output
    assert time.monotonic() - started < 20
    assert "failed to start" in run.stderr and "slug" in run.stderr
    last = client.dynos("broken")[0]
    assert last["state"] == "down" and "failed to start" in last["reason"]


def test_ttl_stops_the_dyno(plat):
    started = time.monotonic()
    run = plat("run", "--app", "dynos", "--ttl", "1", "--", "sleep", "30")
    assert run.code == 143, run.output
    assert time.monotonic() - started < 15
    assert "time to live of 1s expired" in run.stderr


def test_memory_limit_is_enforced(plat):
    run = plat(
        "run",
        "--app",
        "dynos",
        "--size",
        "basic",
        "--",
        "sh",
        "-c",
        "head -c 900M /dev/zero | tail > /dev/null",
    )
    assert run.code == 137, run.output
    assert "memory quota exceeded: the basic size allows 512 MB (R15)" in run.stderr
    fits = plat(
        "run",
        "--app",
        "dynos",
        "--size",
        "standard-2x",
        "--",
        "sh",
        "-c",
        "head -c 700M /dev/zero | tail > /dev/null",
    )
    assert fits.code == 0, "1 GB is enough for 700 MB"


def test_cpu_limit_is_enforced(plat):
    run = plat(
        "run",
        "--app",
        "dynos",
        "--size",
        "basic",
        "--",
        "sh",
        "-c",
        "end=$(($(date +%s) + 2)); while [ $(date +%s) -lt $end ]; do :; done",
    )
    assert run.code == 0
    dynos = json.loads(plat("ps", "--app", "dynos", "--json").stdout)
    last = max((d for d in dynos if d["type"] == "run"), key=lambda d: d["created_at"])
    assert last["stats"]["cpu_throttled"] > 0, "half a CPU: the quota throttled the loop"


def test_ctrl_c_stops_the_dyno(plat, stacks):
    proc = start_invoke(
        ["run", "--app", "dynos", "--", "sh", "-c", "echo ready; sleep 60"],
        plat.ws,
        stacks,
        **plat.env,
    )
    assert proc.stdout.readline().strip() == "ready"
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode == 130
    client = client_of(plat)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        sleeping = [d for d in client.dynos("dynos") if "sleep 60" in d["command"]]
        if sleeping and sleeping[0]["state"] == "down":
            break
        time.sleep(0.2)
    assert sleeping[0]["state"] == "down" and sleeping[0]["exit_code"] == 143


def test_detached_output_goes_to_the_log(plat):
    started = time.monotonic()
    run = plat(
        "run", "--app", "dynos", "--detached", "--", "sh", "-c", "sleep 1; echo detached-marker"
    )
    assert run.code == 0 and time.monotonic() - started < 10
    name = run.stderr.split("up, ")[1].split()[0]
    deadline = time.monotonic() + 30
    marker, exited = (
        f"app[{name}]: detached-marker",
        f"heroku[{name}]: Process exited with status 0",
    )
    while time.monotonic() < deadline:
        logs = plat("logs", "--app", "dynos", "--num", "500").stdout
        if marker in logs and exited in logs:  # the exit is logged a moment after the output
            break
        time.sleep(0.3)
    assert marker in logs
    assert exited in logs


def test_an_app_addressed_by_its_id_is_the_same_app(plat):
    """Dynos and logs by id: one counter of names, one list, one log (Heroku accepts
    either everywhere)."""
    client = client_of(plat)
    app_id = client.app("dynos")["id"]
    by_id = client.create_dyno(app_id, {"command": "echo by-id-marker", "attach": True})
    for _ in client.stream(by_id["attach_http_url"]):
        pass
    by_name = client.create_dyno("dynos", {"command": "true"})
    assert by_id["name"] != by_name["name"], "one counter of names per app"
    listed = {d["id"] for d in client.dynos(app_id)}
    assert {by_id["id"], by_name["id"]} <= listed, "the list by id holds both"
    url = client.log_session(app_id, tail=False, lines=1500)
    assert "/logs/dynos?" in url, url
    assert "by-id-marker" in b"".join(client.stream(url)).decode()


def test_rendezvous_is_the_attached_dyno_s_terminal(plat):
    """heroku run's protocol: TLS (the platform's authority), the secret and CRLF,
    'rendezvous', then stdin and output both ways until the dyno ends."""
    import socket
    import ssl
    import urllib.parse

    client = client_of(plat)
    root = Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"])
    trust = ssl.create_default_context(cafile=str(root / "tls" / "ca.crt"))

    def attach(url: str, secret: str, typed: bytes) -> bytes:
        where = urllib.parse.urlsplit(url)
        with (
            socket.create_connection((where.hostname, where.port), timeout=60) as raw,
            trust.wrap_socket(raw, server_hostname=where.hostname) as tls,
        ):
            tls.sendall(secret.encode() + b"\r\n" + typed)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data

    command = 'read line; echo "got $line"; exit 3'
    dyno = client.create_dyno("dynos", {"command": command, "attach": True})
    assert dyno["attach_url"].startswith("rendezvous://"), dyno["attach_url"]
    secret = urllib.parse.urlsplit(dyno["attach_url"]).path.lstrip("/")
    assert attach(dyno["attach_url"], "not-the-secret", b"") == b"", "a wrong secret: nothing"
    data = attach(dyno["attach_url"], secret, b"hello\n")
    assert data.startswith(b"rendezvous\r\n") and b"got hello" in data, data
    assert wait_for(lambda: client.dyno("dynos", dyno["id"])["exit_code"] == 3)
    # a client slower than its command (heroku run -- echo, on a busy machine) still
    # gets the whole output, after the dyno has ended
    quick = client.create_dyno("dynos", {"command": "echo quick-$((40+2))", "attach": True})
    assert wait_for(lambda: client.dyno("dynos", quick["id"])["exit_code"] == 0)
    late = urllib.parse.urlsplit(quick["attach_url"]).path.lstrip("/")
    assert b"quick-42" in attach(quick["attach_url"], late, b"")
    # whoever attaches over HTTP has no input to give: the command reads EOF at once
    other = client.create_dyno("dynos", {"command": 'cat; echo "eof"', "attach": True})
    out = b"".join(client.stream(other["attach_http_url"]))
    assert out.endswith(b"eof\n"), out


HEROKU_CLI = heroku_cli()
needs_cli = pytest.mark.skipif(
    not HEROKU_CLI,
    reason="the official Heroku CLI: ./setup --dev installs it (or set SELFHOST_TEST_HEROKU_CLI)",
)


def heroku_of(plat, home: Path):
    """Run the official Heroku CLI against the platform, with the environment that
    docs/platform.md gives (HEROKU_HOST, HEROKU_API_KEY, NODE_EXTRA_CA_CERTS)."""
    root = Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"])
    env = {
        **os.environ,
        "HOME": str(home),
        "HEROKU_HOST": client_of(plat).base_url,
        "HEROKU_API_KEY": (root / "token").read_text().strip(),
        "NODE_EXTRA_CA_CERTS": str(root / "tls" / "ca.crt"),
    }

    def heroku(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        assert HEROKU_CLI
        done = subprocess.run(
            [*HEROKU_CLI, *args], input=stdin, env=env, capture_output=True, text=True, timeout=120
        )
        done.out = done.stdout + done.stderr  # type: ignore[attr-defined]
        return done

    heroku.env = env  # type: ignore[attr-defined]
    return heroku


def release_procfile(client: PlatformClient, app: str, tmp_path: Path) -> None:
    from selfhost.platform.slugs.slug import parse_procfile

    contents = SlugContents()
    contents.add_file("Procfile", data=PROCFILE.encode())
    types = parse_procfile(PROCFILE)
    info = pack(contents, tmp_path / f"{app}.tgz", mtime=0, process_types=types)
    client.release_slug(app, info.path, checksum=info.checksum, size=info.size, process_types=types)


@needs_cli
def test_the_heroku_cli_runs_one_off_dynos(plat, tmp_path):
    """`heroku run` (attached: rendezvous, stdin, exit codes with -x), `run:detached`,
    `apps`, `apps:info`, `config:set`/`unset`, `releases -n 1` and `logs`, from the
    official CLI pointed at the platform."""
    client = client_of(plat)
    heroku = heroku_of(plat, tmp_path)
    ok = heroku("run", "-x", "-a", "dynos", "--", "echo ok-from-heroku-run")
    assert ok.returncode == 0 and "ok-from-heroku-run" in ok.stdout, ok.out
    failed = heroku("run", "-x", "-a", "dynos", "--", 'sh -c "exit 4"')
    assert failed.returncode == 4, failed.out
    typed = heroku("run", "-x", "-a", "dynos", "--", "cat; echo done", stdin="l1\nl2\n")
    assert typed.returncode == 0 and "l1\nl2\ndone" in typed.stdout, typed.out
    detached = heroku("run:detached", "-a", "dynos", "--", "echo detached-marker")
    assert detached.returncode == 0, detached.out
    assert wait_for(lambda: "detached-marker" in plat("logs", "--app", "dynos").stdout)
    # the everyday commands around it
    apps = heroku("apps")
    assert apps.returncode == 0 and "dynos" in apps.stdout, apps.out
    info = heroku("apps:info", "-a", "dynos")
    assert info.returncode == 0 and "Slug Size" in info.stdout, info.out
    before = max(r["version"] for r in client.releases("dynos"))
    configured = heroku("config:set", "HEROKU_CLI_SET=yes", "-a", "dynos")
    assert configured.returncode == 0, configured.out
    assert f"v{before + 1}" in configured.out, "the version it made"
    assert client.config("dynos")["HEROKU_CLI_SET"] == "yes"
    shown = heroku("config", "-a", "dynos", "--json")
    assert json.loads(shown.stdout)["HEROKU_CLI_SET"] == "yes", shown.out
    newest = heroku("releases", "-a", "dynos", "-n", "1")
    assert f"v{before + 1}" in newest.stdout and f"v{before} " not in newest.stdout
    logs = heroku("logs", "-a", "dynos", "-n", "200")
    assert logs.returncode == 0 and "detached-marker" in logs.stdout, logs.out
    unset = heroku("config:unset", "HEROKU_CLI_SET", "-a", "dynos")
    assert unset.returncode == 0 and "HEROKU_CLI_SET" not in client.config("dynos")
    assert f"v{before + 2}" in unset.out, unset.out


@needs_cli
def test_heroku_run_from_a_terminal_gets_one(plat, tmp_path):
    """`heroku run bash` typed at a terminal: the dyno runs in a pseudo-terminal of the
    client's size, Ctrl-C interrupts the command (not the session), `exit 3` is -x's
    exit code. The CLI runs in a pseudo-terminal of the test's, as a person's would."""
    import fcntl
    import select
    import struct
    import termios

    heroku = heroku_of(plat, tmp_path)
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    cli = subprocess.Popen(
        [*(HEROKU_CLI or []), "run", "-x", "-a", "dynos", "--", "bash"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**heroku.env, "TERM": "xterm"},  # type: ignore[attr-defined]
        start_new_session=True,
    )
    os.close(terminal)
    seen = b""

    def until(marker: bytes, timeout: float = 60) -> bool:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        return marker in seen

    try:
        assert until(b"# ") or until(b"$ "), seen  # the shell's prompt: it is interactive
        # (what the shell prints is computed, so it is not the echo of what was typed)
        os.write(master, b"echo $((6*7)); stty size; test -t 0 && echo tty-$((2+3))\r")
        assert until(b"tty-5"), seen
        assert b"42\r" in seen and b"33 101" in seen, seen
        started = time.monotonic()
        os.write(master, b"sleep 60\r")
        time.sleep(1)
        os.write(master, b"\x03")  # Ctrl-C, as a terminal sends it in raw mode
        os.write(master, b"echo still-$((1+1))\r")
        assert until(b"still-2", 30), seen
        assert time.monotonic() - started < 30, "Ctrl-C interrupted the sleep"
        os.write(master, b"exit 3\r")
        assert cli.wait(60) == 3, seen
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        os.close(master)


@needs_cli
def test_the_heroku_cli_manages_apps_releases_and_the_formation(plat, tmp_path):
    """apps:create, ps, ps:scale, ps:restart, ps:stop, releases:info, rollback,
    logs --tail and apps:destroy, each checked against the platform's state."""
    client = client_of(plat)
    heroku = heroku_of(plat, tmp_path)
    created = heroku("apps:create", "cli-made", "--stack", "bookworm")
    assert created.returncode == 0 and "cli-made" in created.out, created.out
    assert client.app("cli-made")["stack"]["name"] == "bookworm"
    release_procfile(client, "cli-made", tmp_path)
    assert wait_for(lambda: live(client, "cli-made", "web"), timeout=60)
    scaled = heroku("ps:scale", "worker=2", "-a", "cli-made")
    assert scaled.returncode == 0 and "worker at 2" in scaled.out, scaled.out
    assert wait_for(lambda: len(live(client, "cli-made", "worker")) == 2)
    ps = heroku("ps", "-a", "cli-made")
    assert ps.returncode == 0, ps.out
    assert "worker.1: up" in ps.stdout and "worker.2: up" in ps.stdout and "web.1: up" in ps.stdout
    before = {d["id"] for d in live(client, "cli-made", "worker")}
    restarted = heroku("ps:restart", "--process-type", "worker", "-a", "cli-made")
    assert restarted.returncode == 0, restarted.out

    def replaced() -> bool:
        now = live(client, "cli-made", "worker")
        return len(now) == 2 and not before & {d["id"] for d in now}

    assert wait_for(replaced), client.dynos("cli-made")
    web = live(client, "cli-made", "web")[0]["id"]
    assert heroku("ps:stop", "--dyno-name", "web.1", "-a", "cli-made").returncode == 0
    # stopped, then started again by the supervisor: the formation still wants one
    assert wait_for(lambda: [d["id"] for d in live(client, "cli-made", "web")] not in ([], [web]))
    assert "Stopping (stopped by request)" in plat("logs", "--app", "cli-made").stdout
    ps = heroku("ps", "-a", "cli-made").stdout
    assert ps.count("web.1:") == 1, "ps lists the dynos that exist now, one per name"
    # releases:info and rollback: code and config come back
    assert heroku("config:set", "COLOR=blue", "-a", "cli-made").returncode == 0
    assert heroku("config:set", "COLOR=red", "-a", "cli-made").returncode == 0
    info = heroku("releases:info", "v2", "-a", "cli-made")
    assert info.returncode == 0 and "COLOR: blue" in info.stdout, info.out
    rolled = heroku("rollback", "v2", "-a", "cli-made")
    assert rolled.returncode == 0 and "v4" in rolled.out, rolled.out
    assert client.config("cli-made")["COLOR"] == "blue"
    assert client.releases("cli-made")[-1]["description"] == "Rollback to v2"
    # logs --tail follows what happens next
    tail = subprocess.Popen(
        [*(HEROKU_CLI or []), "logs", "--tail", "-a", "cli-made"],
        env=heroku.env,  # type: ignore[attr-defined]
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(2)
        assert heroku("run:detached", "-a", "cli-made", "--", "echo tailed-marker").returncode == 0
        seen = ""
        deadline = time.monotonic() + 30
        while "tailed-marker" not in seen and time.monotonic() < deadline:
            seen += tail.stdout.readline() if tail.stdout else ""
        assert "tailed-marker" in seen, seen
    finally:
        tail.kill()
        tail.wait()
    destroyed = heroku("apps:destroy", "-a", "cli-made", "--confirm", "cli-made")
    assert destroyed.returncode == 0, destroyed.out
    assert "cli-made" not in [a["name"] for a in client.apps()]
    root = Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"])
    assert not (root / "logs" / "cli-made.log").exists()
    gone = heroku("apps:info", "-a", "cli-made")
    assert gone.returncode != 0 and "Couldn't find that app" in gone.out, gone.out


def test_heroku3_drives_the_platform(plat, tmp_path, monkeypatch):
    """The Python client heroku3: apps, config, releases (ranged), formation, attached
    and detached runs, logs, restart, rollback, dyno kill and app delete."""
    pytest.importorskip("heroku3")
    import heroku3.api
    import heroku3.rendezvous
    import requests

    root = Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"])
    client = client_of(plat)
    # heroku3 trusts only its own CA bundle for rendezvous, and has no setting for it
    original = heroku3.rendezvous.Rendezvous.__init__

    def trusting(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.cert = str(root / "tls" / "ca.crt")

    monkeypatch.setattr(heroku3.rendezvous.Rendezvous, "__init__", trusting)
    h = heroku3.api.Heroku(requests.session())
    h._heroku_url = client.base_url
    assert h.authenticate((root / "token").read_text().strip())
    app = h.create_app(name="h3-app", stack_id_or_name="bookworm")
    assert app.name == "h3-app" and client.app("h3-app")["id"] == app.id
    release_procfile(client, "h3-app", tmp_path)
    assert "h3-app" in [a.name for a in h.apps()]
    config = app.config()
    config["GREETING"] = "hi"
    config["DROPPED"] = "x"
    del config["DROPPED"]
    assert client.config("h3-app") == {"GREETING": "hi"}
    newest = app.releases(order_by="version", sort="desc", limit=2)
    assert [r.version for r in newest] == [4, 3]
    formation = {f.type: f for f in app.process_formation()}
    assert formation["web"].quantity == 1 and formation["worker"].quantity == 0
    formation["worker"].scale(2)
    assert wait_for(lambda: len(live(client, "h3-app", "worker")) == 2)
    output, dyno = h.run_command_on_app("h3-app", "echo from-heroku3 $GREETING", printout=False)
    assert output == "from-heroku3 hi\n" and dyno.name.startswith("run.")
    detached = h.run_command_on_app("h3-app", "echo detached-h3", attach=False)
    assert detached.name.startswith("run.")
    assert wait_for(lambda: "detached-h3" in h.get_app_log("h3-app", lines=100, timeout=5))
    before = {d["id"] for d in live(client, "h3-app", "worker")}
    app.restart()
    assert wait_for(lambda: before.isdisjoint({d["id"] for d in live(client, "h3-app", "worker")}))
    first = app.releases()[0]
    assert app.rollback(first.id).version == 5 and client.config("h3-app") == {}
    # (the rollback replaces the workers: wait for the new worker.1)
    worker = wait_for(
        lambda: next((d for d in app.dynos() if d.name == "worker.1" and d.state == "up"), None)
    )
    assert worker is not None, client.dynos("h3-app")
    worker.kill()
    assert "worker.1" in plat("logs", "--app", "h3-app").stdout
    app.delete()
    assert "h3-app" not in [a.name for a in h.apps()]


def test_bad_input(plat):
    unknown = plat("run", "--app", "nope", "--", "true")
    assert unknown.code == 11 and "Couldn't find that app" in unknown.stderr
    empty = plat("run", "--app", "dynos")
    assert empty.code == 2 and "no command to run" in empty.stderr
    size = plat("run", "--app", "dynos", "--size", "huge", "--", "true")
    assert size.code == 11 and "size must be one of" in size.stderr
    scale = plat("scale", "--app", "dynos", "nosuch=1")
    assert scale.code == 11 and "process type (nosuch)" in scale.stderr
    assert "Traceback" not in unknown.output + empty.output + size.output + scale.output


@pytest.mark.docker
def test_docker_engine_dyno(plat):
    run = plat(
        "run",
        "--app",
        "dynos",
        "--engine",
        "docker",
        "--",
        "sh",
        "-c",
        'echo "$DYNO on docker"; exit 42',
    )
    assert run.code == 42, run.output
    assert "on docker" in run.stdout
    oom = plat(
        "run",
        "--app",
        "dynos",
        "--engine",
        "docker",
        "--size",
        "basic",
        "--",
        "sh",
        "-c",
        "head -c 900M /dev/zero | tail > /dev/null",
    )
    assert oom.code == 137, oom.output
    assert "memory quota exceeded" in oom.stderr, "the container's memory limit is enforced"


def test_logs_tail_follows_new_output(plat, stacks):
    follower = start_invoke(
        ["logs", "--app", "dynos", "--tail", "--num", "0"], plat.ws, stacks, **plat.env
    )
    try:
        time.sleep(1.0)
        assert (
            plat("run", "--app", "dynos", "--detached", "--", "sh", "-c", "echo tail-marker").code
            == 0
        )
        deadline = time.monotonic() + 20
        seen = ""
        while "tail-marker" not in seen and time.monotonic() < deadline:
            seen += follower.stdout.readline()
        assert "tail-marker" in seen
    finally:
        os.killpg(follower.pid, signal.SIGINT)
        follower.wait(timeout=10)


def test_a_full_bootstrap_runs_in_a_one_off_dyno(plat):
    run = plat("run", "--app", "dynos", "--", "bin/rebuild", timeout=900)
    assert run.code == 0, run.output[-3000:]
    assert "==> stage3: built by stage2" in run.stdout and "stage3: tree digest" in run.stdout
    assert (
        "identical: stage3 rebuilt in this dyno equals the slug's tcc, byte for byte" in run.stdout
    )


# ------------------------------------------------------------------------- formation

WORKER = (
    """worker: sh -c 'trap "echo graceful $DYNO; exit 0" TERM; """
    """echo started $DYNO; while true; do sleep 0.2; done'\n"""
)
PROCFILE = (
    WORKER
    + """\
crasher: sh -c 'echo crashing $DYNO; exit 3'
web: sh -c 'echo web $DYNO port=$PORT; while true; do sleep 0.2; done'
"""
)


def wait_for(fn, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def live(client: PlatformClient, app: str, kind: str) -> list[dict]:
    return [d for d in client.dynos(app) if d["type"] == kind and d["state"] == "up"]


def test_formation_scale_crash_restart_and_web_port(plat, tmp_path):
    client = client_of(plat)
    client.create_app("formation", "bookworm")
    contents = SlugContents()
    contents.add_file("Procfile", data=PROCFILE.encode())
    info = pack(
        contents,
        tmp_path / "f.tgz",
        mtime=0,
        process_types={"worker": "w", "crasher": "c", "web": "x"},
    )
    from selfhost.platform.slugs.slug import parse_procfile

    client.release_slug(
        "formation",
        info.path,
        checksum=info.checksum,
        size=info.size,
        process_types=parse_procfile(PROCFILE),
    )
    # web starts at 1 (Heroku's default) and gets a PORT
    assert wait_for(lambda: live(client, "formation", "web"), timeout=60), (
        client.dynos("formation"),
        plat("logs", "--app", "formation").stdout[-3000:],
    )
    scaled = plat("scale", "--app", "formation", "worker=3", "crasher=1")
    assert scaled.code == 0, scaled.output
    assert wait_for(lambda: len(live(client, "formation", "worker")) == 3)
    down = plat("scale", "--app", "formation", "worker=1")
    assert down.code == 0
    assert wait_for(lambda: len(live(client, "formation", "worker")) == 1)
    remaining = live(client, "formation", "worker")
    assert [d["name"] for d in remaining] == ["worker.1"]

    def logs() -> str:
        return plat("logs", "--app", "formation", "--num", "1500").stdout

    assert wait_for(lambda: "graceful worker.3" in logs() and "graceful worker.2" in logs())
    text = logs()
    assert "app[worker.3]: graceful worker.3" in text, "SIGTERM reached the process"
    assert "heroku[worker.3]: Process exited with status 0" in text
    port_line = next(line for line in text.splitlines() if "app[web.1]: web web.1 port=" in line)
    assert int(port_line.rsplit("=", 1)[1]) > 0
    # the crasher is restarted, with backoff
    assert wait_for(
        lambda: any(
            d["restarts"] >= 2 for d in client.dynos("formation") if d["type"] == "crasher"
        ),
        timeout=30,
    )
    starts = [line for line in logs().splitlines() if "app[crasher.1]: crashing" in line]
    assert 3 <= len(starts) <= 8, f"backoff: {len(starts)} starts"
    ps = plat("ps", "--app", "formation")
    assert ps.code == 0 and "crasher.1" in ps.stdout and "worker.1" in ps.stdout
    # a new release replaces the running dynos
    before = live(client, "formation", "worker")[0]["release"]["version"]
    client.release_slug(
        "formation",
        info.path,
        checksum=info.checksum,
        size=info.size,
        process_types=parse_procfile(PROCFILE),
    )
    assert wait_for(
        lambda: any(d["release"]["version"] > before for d in live(client, "formation", "worker"))
    )
    plat("scale", "--app", "formation", "worker=0", "crasher=0", "web=0")
    assert wait_for(lambda: not any(d["state"] == "up" for d in client.dynos("formation")))


def test_a_web_dyno_whose_port_is_taken_says_so(plat, tmp_path):
    import socket

    client = client_of(plat)
    client.create_app("busy", "bookworm")
    procfile = "web: sh -c 'echo listening on $PORT; while true; do sleep 0.2; done'\n"
    contents = SlugContents()
    contents.add_file("Procfile", data=procfile.encode())
    info = pack(contents, tmp_path / "w.tgz", mtime=0, process_types={"web": "x"})
    from selfhost.platform.slugs.slug import parse_procfile

    release = {"checksum": info.checksum, "size": info.size}
    client.release_slug("busy", info.path, process_types=parse_procfile(procfile), **release)
    web = wait_for(lambda: live(client, "busy", "web"), timeout=60)
    assert web, client.dynos("busy")
    port = web[0]["port"]
    assert plat("scale", "--app", "busy", "web=0").code == 0
    assert wait_for(lambda: not live(client, "busy", "web"))
    with socket.socket() as squatter:  # another program on this host takes the port
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        assert plat("scale", "--app", "busy", "web=1").code == 0
        reason = f"the dyno's port {port} is in use on 127.0.0.1 by another process"

        def logged() -> bool:
            return reason in plat("logs", "--app", "busy", "--num", "200").stdout

        assert wait_for(logged), plat("logs", "--app", "busy").stdout[-2000:]
        assert plat("scale", "--app", "busy", "web=0").code == 0


def test_a_slug_that_escapes_app_is_refused(plat, tmp_path):
    from tests.unit.test_slug import evil_slug

    client = client_of(plat)
    client.create_app("evil", "bookworm")
    path = evil_slug(tmp_path, "symlink")
    slug = client.create_slug("evil", {"process_types": {"w": "x"}})
    from selfhost.platform.client import ApiRequestError

    with pytest.raises(ApiRequestError) as info:
        client.upload(slug["blob"], path)
    assert info.value.status == 422 and info.value.ident == "invalid_slug"
    assert "outside /app" in info.value.message
    with pytest.raises(ApiRequestError, match="no verified blob"):
        client.release("evil", slug["id"])


def test_kill_9_of_the_daemon_leaves_its_dynos_running_and_the_next_adopts_them(plat):
    """The data plane survives the control plane: dynos outlive a killed daemon, the
    next one adopts them (and their output), and what ended meanwhile is cleaned."""
    client = client_of(plat)
    run = plat(
        "run",
        "--app",
        "dynos",
        "--detached",
        "--",
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.3; done",
    )
    short = plat("run", "--app", "dynos", "--detached", "--", "sleep", "2")
    assert run.code == 0 and short.code == 0
    root = Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"])
    dynos_dir = str(root / "dynos")

    def mounts() -> list[str]:
        return [
            line for line in Path("/proc/self/mounts").read_text().splitlines() if dynos_dir in line
        ]

    def up() -> dict[str, dict]:
        return {d["name"]: d for d in client.dynos("dynos") if d["state"] == "up"}

    before = wait_for(lambda: len(up()) == 2 and up())
    assert wait_for(mounts), "the dyno's /app is an overlay mount"
    pid = json.loads((root / "daemon.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(3)  # the short dyno ends while no daemon watches
    assert ticking(), "the dyno outlives the daemon"
    left = pastas(root)
    assert plat("platform.up").code == 0
    client = client_of(plat)
    adopted = wait_for(lambda: [d for d in up().values() if d["command"].startswith("sh -c")])
    long_run = next(d for d in before.values() if d["command"].startswith("sh -c"))
    assert adopted[0]["id"] == long_run["id"], (adopted, long_run)
    assert len(up()) == 1, up()
    log = (root / "logs" / "dynos.log").read_text()
    short_run = next(d for d in before.values() if d["command"].startswith("sleep"))
    assert f"heroku[{short_run['name']}]: Process exited with status 0 while the platform" in log
    assert f"heroku[{long_run['name']}]: Adopted by the restarted platform daemon" in log
    seen = log.count(f"app[{long_run['name']}]: tick")
    assert wait_for(lambda: (root / "logs" / "dynos.log").read_text().count("tick") > seen + 2), (
        "its output reaches the log again"
    )
    assert len(set(left) & set(pastas(root))) == 1, "the adopted dyno's pasta is kept"
    # the adopted dyno is the platform's like any other: stopped, it leaves nothing
    assert plat("ps.stop", "--app", "dynos", long_run["name"]).code == 0
    assert wait_for(lambda: not up() and not ticking(), timeout=40)
    assert wait_for(lambda: not mounts()), mounts()
    assert not list(Path(dynos_dir).glob("*")) and not list((root / "kept").glob("*"))
    again = plat("run", "--app", "dynos", "--", "true")
    assert again.code == 0
    # platform.down stops every pasta of the platform, its pool's too
    assert plat("platform.down").code == 0
    assert wait_for(lambda: not pastas(root), timeout=10), f"left running: {pastas(root)}"
    assert plat("platform.up").code == 0


def ticking() -> list[str]:
    """The processes of the test's ticking dyno (its shell loop), by pid."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\x00")
        except OSError:  # the process ended while we looked
            continue
        if b"while true; do echo tick; sleep 0.3; done" in argv and b"bwrap" not in argv[0]:
            found.append(cmdline.parent.name)
    return found


def pastas(root: Path) -> list[int]:
    """The pasta processes of the platform at ``root`` (their pid files are in it)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\x00")
        except OSError:  # the process ended while we looked
            continue
        if argv[0].endswith(b"pasta") and str(root / "net").encode() in b" ".join(argv):
            found.append(int(cmdline.parent.name))
    return found
