"""The attack suite: each attack runs inside a real build step or a real dyno, twice.

Against the weakened sandbox (``SELFHOST_INSECURE_SANDBOX_FOR_TESTS=1``: root, every
capability, no seccomp filter, the host's network: what selfhost did before its
security model) the attack succeeds, which shows the test can fail; against the real
sandbox it fails. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from selfhost.platform.client import ApiRequestError, PlatformClient
from selfhost.stages.security import INSECURE_ENV
from tests.integration.conftest import Run, invoke

WEAK = {INSECURE_ENV: "1"}
MODES = ("weak", "real")


# --------------------------------------------------------------------------- build steps

ATTACK_BUILD = """\
if [ -x "$PREFIX/bin/gen" ]; then
  # stage 2: stage 1 is mounted read-only at $PREFIX; try to forge it, and the stack
  mount -o remount,rw,bind "$PREFIX" 2>/dev/null
  if echo forged > "$PREFIX/bin/gen" 2>/dev/null; then echo "ATTACK: rewrote stage 1"; fi
  mount -o remount,rw,bind / 2>/dev/null
  if touch /usr/share/selfhost-build-attack 2>/dev/null; then echo "ATTACK: wrote the stack"; fi
  cp /bin/sh "$DESTDIR/rootsh" && chmod 4755 "$DESTDIR/rootsh"
fi
mkdir -p "$DESTDIR$PREFIX/bin"
printf '#!/bin/sh\\necho gen\\n' > "$DESTDIR$PREFIX/bin/gen"
chmod 755 "$DESTDIR$PREFIX/bin/gen"
"""


@pytest.fixture
def attack_recipe(tmp_path: Path, http_dir) -> Path:
    www, base = http_dir
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("attack-1/build.sh")
        info.size = len(ATTACK_BUILD)
        tar.addfile(info, io.BytesIO(ATTACK_BUILD.encode()))
    (www / "attack.tar.gz").write_bytes(buf.getvalue())
    recipe = tmp_path / "attack.toml"
    recipe.write_text(f"""\
name = "attack"
version = "1"
prefix = "/opt/attack"
builder = "$PREFIX/bin/gen"
stages = 2
fixpoint = "warn"

[[sources]]
kind = "tarball"
url = "{base}/attack.tar.gz"
sha256 = "{hashlib.sha256(buf.getvalue()).hexdigest()}"

[stage0]
builder = "true"

[steps]
build = "sh build.sh"
install = "test -d $DESTDIR"
""")
    return recipe


def as_nobody(program: Path, *args: str) -> str:
    """Run a program as an unprivileged host user (nobody); its stdout."""
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", str(program), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.stdout.strip()


def viewable(directory: Path, tmp_path: Path) -> Path:
    """Bind ``directory`` where nobody can reach it (its own path may be 0700)."""
    view = tmp_path / "view"
    view.mkdir(parents=True)
    for parent in (tmp_path, *tmp_path.parents):
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    subprocess.run(["mount", "--bind", str(directory), str(view)], check=True)
    return view


def test_build_steps_cannot_forge_the_cache_the_stack_or_a_setuid_root(
    attack_recipe: Path, tmp_path: Path, stacks: Path
) -> None:
    weak = invoke(
        ["bootstrap", "--compiler", str(attack_recipe), "--json"], tmp_path / "weak", stacks, **WEAK
    )
    real = invoke(
        ["bootstrap", "--compiler", str(attack_recipe), "--json"], tmp_path / "real", stacks
    )
    rootfs = stacks / weak.json["stack"]["digest"] / "rootfs"
    planted = rootfs / "usr/share/selfhost-build-attack"
    try:
        assert weak.code == 0, weak.output
        assert real.code == 0, real.output
        logs = {}
        for mode, run in (("weak", weak), ("real", real)):
            entry = Path(run.json["stages"][1]["manifest"]).parent
            logs[mode] = (entry / "logs/stage.log").read_text()
        # weakened: stage 1 forged in the cache, the stack written, a root setuid shell
        assert "ATTACK: rewrote stage 1" in logs["weak"]
        assert "ATTACK: wrote the stack" in logs["weak"]
        stage1 = Path(weak.json["stages"][0]["manifest"]).parent / "tree/opt/attack/bin/gen"
        assert stage1.read_text() == "forged\n"
        weak_sh = Path(weak.json["stages"][1]["manifest"]).parent / "tree/rootsh"
        assert weak_sh.stat().st_uid == 0 and weak_sh.stat().st_mode & 0o4000
        view = viewable(weak_sh.parent, tmp_path / "w")
        try:
            assert as_nobody(view / "rootsh", "-p", "-c", "id -u") == "0", "host root, as nobody"
        finally:
            subprocess.run(["umount", str(view)], check=True)
        # real: nothing of it
        assert "ATTACK" not in logs["real"], logs["real"]
        stage1 = Path(real.json["stages"][0]["manifest"]).parent / "tree/opt/attack/bin/gen"
        assert stage1.read_text() == "#!/bin/sh\necho gen\n"
        real_sh = Path(real.json["stages"][1]["manifest"]).parent / "tree/rootsh"
        assert real_sh.stat().st_mode & 0o6000 == 0, "no setuid bit reaches the host"
        # the forged cache is caught before it is used, with the files that changed
        again = invoke(["bootstrap", "--compiler", str(attack_recipe)], tmp_path / "weak", stacks)
        assert again.code == 14, again.output
        assert "was modified after it was recorded" in again.stderr
        assert "opt/attack/bin/gen" in again.stderr
    finally:
        planted.unlink(missing_ok=True)


# --------------------------------------------------------------------------- dynos


class Platform:
    """A platform of this module, weakened or real, with the tcc slug as app 'target'."""

    def __init__(self, mode: str, ws: Path, stacks: Path, root: Path):
        self.mode = mode
        self.ws = ws
        self.stacks = stacks
        self.root = root
        self.env = {
            "INVOKE_SELFHOST_PLATFORM_DIR": str(root),
            "INVOKE_SELFHOST_DYNO_GRACE_SECONDS": "1",
            **(WEAK if mode == "weak" else {}),
        }

    def __call__(self, *args: str, timeout: float = 300) -> Run:
        return invoke(list(args), self.ws, self.stacks, timeout=timeout, **self.env)

    def run(self, script: str, *options: str) -> Run:
        return self("run", "--app", "target", *options, "--", script)

    @property
    def client(self) -> PlatformClient:
        info = json.loads((self.root / "daemon.json").read_text())
        return PlatformClient(info["url"], (self.root / "token").read_text().strip())


@pytest.fixture(scope="module")
def platforms(tcc_slug, stacks, tmp_path_factory) -> dict[str, Platform]:
    ws, _ = tcc_slug
    out = {}
    for mode in MODES:
        plat = Platform(mode, ws, stacks, tmp_path_factory.mktemp(f"attack-{mode}") / "plat")
        released = plat("release", "--app", "target")
        assert released.code == 0, released.output
        out[mode] = plat
    yield out
    for plat in out.values():
        plat("platform.down")


def stack_of(plat: Platform) -> Path:
    """The rootfs of the stack the released slug runs on."""
    meta = plat.run("cat /app/selfhost.json")
    return plat.stacks / json.loads(meta.stdout)["built_on"]["digest"] / "rootfs"


def test_a_dyno_cannot_remount_or_write_the_stack(platforms) -> None:
    script = (
        "mount -o remount,rw,bind / 2>/dev/null; "
        "touch /usr/share/selfhost-dyno-attack 2>/dev/null && echo PWNED"
    )
    planted = stack_of(platforms["real"]) / "usr/share/selfhost-dyno-attack"
    try:
        weak = platforms["weak"].run(script)
        assert "PWNED" in weak.stdout and planted.exists(), weak.output
        planted.unlink()
        real = platforms["real"].run(
            script + "; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"
        )
        assert "PWNED" not in real.stdout and not planted.exists(), real.output
        status = dict(line.split(":\t") for line in real.stdout.splitlines() if ":\t" in line)
        assert status == {"CapEff": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
        unshare = platforms["real"].run("unshare -U true && echo NEWNS")
        assert "NEWNS" not in unshare.stdout
    finally:
        planted.unlink(missing_ok=True)


LIFT = """\
mkdir -p /tmp/cg
if mount -t cgroup -o memory none /tmp/cg 2>/dev/null; then
  # raise the swap limit first: the memory limit may not exceed it
  for n in memory.memsw.limit_in_bytes memory.limit_in_bytes; do
    if [ -e /tmp/cg/$n ]; then echo -1 > /tmp/cg/$n 2>/dev/null || failed=1; fi
  done
  f=/tmp/cg/memory.limit_in_bytes
elif mount -t cgroup2 none /tmp/cg 2>/dev/null; then
  echo max > /tmp/cg/memory.max 2>/dev/null || failed=1
  f=/tmp/cg/memory.max
fi
if [ -n "${f:-}" ] && [ -z "${failed:-}" ]; then echo "LIFTED $(cat "$f")"; fi
"""


def test_a_dyno_cannot_lift_its_cgroup_limits(platforms) -> None:
    weak = platforms["weak"].run(LIFT, "--size", "basic")
    assert "LIFTED" in weak.stdout, weak.output
    real = platforms["real"].run(LIFT, "--size", "basic")
    assert "LIFTED" not in real.stdout, real.output


def find_dyno_dir(plat: Platform, name: str) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dynos = plat.client.dynos("target")
        live = [d for d in dynos if d["name"] == name and d["state"] == "up"]
        if live:
            # the overlay's upper layer, or the copy of the slug where an overlay
            # cannot be mounted (the weakened sandbox on an overlayfs /tmp)
            root = plat.root / "dynos" / live[0]["id"]
            for path in (root / "upper" / "rootsh", root / "app" / "rootsh"):
                if path.exists():
                    return path
        time.sleep(0.2)
    raise AssertionError(f"{name} never made /app/rootsh")


def test_a_setuid_file_from_a_dyno_gives_no_host_root(platforms, tmp_path) -> None:
    script = "cp /bin/bash /app/rootsh && chmod 4755 /app/rootsh && sleep 60"
    results = {}
    for mode in MODES:
        plat = platforms[mode]
        started = plat.run(script, "--detached")
        assert started.code == 0, started.output
        name = started.stderr.split("up, ")[1].split()[0]
        try:
            path = find_dyno_dir(plat, name)
            view = viewable(path.parent, tmp_path / mode)
            try:
                results[mode] = (
                    path.stat().st_uid,
                    path.stat().st_mode,
                    as_nobody(view / "rootsh", "-p", "-c", "id -u"),
                )
            finally:
                subprocess.run(["umount", str(view)], check=True)
        finally:
            plat("ps.stop", "--app", "target", name)
    uid, mode_bits, euid = results["weak"]
    assert uid == 0 and mode_bits & 0o4000 and euid == "0", results
    uid, mode_bits, euid = results["real"]
    assert uid != 0 and euid != "0", results


def tcp_server(address: str) -> tuple[socket.socket, int]:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, 0))
    server.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"secret\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def host_address() -> str:
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True).stdout
    for interface in json.loads(out):
        for address in interface.get("addr_info", []):
            if not address["local"].startswith("127."):
                return address["local"]
    pytest.skip("this machine has no non-loopback address")


PROBE = """python3 - <<'EOF'
import os, socket
def tcp(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return "open"
    except OSError:
        return "closed"
api = int(os.environ["SELFHOST_API_URL"].rsplit(":", 1)[1])
print("loopback", tcp("127.0.0.1", {loop}))
print("interface", tcp("{addr}", {any}))
print("api", tcp("127.0.0.1", api))
EOF"""


def test_a_dyno_reaches_only_what_it_was_given(platforms) -> None:
    loopback, loop_port = tcp_server("127.0.0.1")
    anywhere, any_port = tcp_server("0.0.0.0")
    try:
        probe = PROBE.format(loop=loop_port, any=any_port, addr=host_address())
        seen = {}
        for mode in MODES:
            run = platforms[mode].run(probe)
            assert run.code == 0, run.output
            seen[mode] = dict(line.split() for line in run.stdout.splitlines())
        assert seen["weak"] == {"loopback": "open", "interface": "open", "api": "open"}
        assert seen["real"] == {"loopback": "closed", "interface": "closed", "api": "open"}
    finally:
        loopback.close()
        anywhere.close()


LEAK = r"""
env
cat /proc/*/environ 2>/dev/null | tr '\0' '\n'
python3 - <<'EOF'
import json, os, urllib.error, urllib.request
def call(method, path, body=None):
    req = urllib.request.Request(os.environ["SELFHOST_API_URL"] + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Bearer " + os.environ["SELFHOST_API_TOKEN"],
                 "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code
for name, method, path, body in (
        ("own-config", "GET", "/apps/target/config-vars", None),
        ("other-app", "GET", "/apps/other", None),
        ("list-apps", "GET", "/apps", None),
        ("create-app", "POST", "/apps", {"name": "stolen"}),
        ("set-config", "PATCH", "/apps/target/config-vars", {"X": "1"})):
    print("CALL", name, call(method, path, body))
EOF
"""


def test_the_platform_token_never_enters_a_dyno(platforms) -> None:
    plat = platforms["real"]
    master = (plat.root / "token").read_text().strip()
    plat.client.create_app("other", "bookworm")
    run = plat.run(LEAK)
    assert run.code == 0, run.output
    assert "SELFHOST_API_TOKEN=dyno-" in run.stdout, "a dyno gets its own token"
    assert master not in run.output, "the platform's token is in no dyno's environment"
    calls = dict(line.split()[1:] for line in run.stdout.splitlines() if line.startswith("CALL "))
    assert calls["own-config"] == "200", run.output
    for forbidden in ("other-app", "list-apps", "create-app", "set-config"):
        assert calls[forbidden] == "403", (forbidden, run.output)
    # the same calls with the platform's token are fine: the 403s are the scope's
    assert plat.client.app("other")["name"] == "other"


SCAN = "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"


def test_a_dyno_s_secrets_are_in_no_host_command_line(platforms) -> None:
    """Any host user can read every process's command line: a dyno's config vars and
    its token must not be in one (bwrap reads its options from a memfd)."""
    plat = platforms["real"]
    secret = "s3cret-" + os.urandom(6).hex()
    plat.client.update_config("target", {"SELFHOST_TEST_SECRET": secret})
    try:
        # the attack works: nobody reads another user's command line
        marker = subprocess.Popen(["sh", "-c", "sleep 30; :", secret + "-marker"])
        try:
            assert secret + "-marker" in as_nobody(Path("/bin/sh"), "-c", SCAN)
        finally:
            marker.kill()
            marker.wait()
        command = 'echo "up $SELFHOST_API_TOKEN"; sleep 3'
        dyno = plat.client.create_dyno("target", {"command": command, "attach": True})
        stream = plat.client.stream(dyno["attach_http_url"])
        first = next(stream).decode()
        assert first.startswith("up dyno-"), first
        token = first.split()[1]
        seen = as_nobody(Path("/bin/sh"), "-c", SCAN)
        for _ in stream:
            pass
        assert command in seen, "the scan saw the running dyno"
        assert secret not in seen, "a config var is in a host command line"
        assert token not in seen, "the dyno's token is in a host command line"
    finally:
        plat.client.update_config("target", {"SELFHOST_TEST_SECRET": None})


def test_no_config_var_mounts_a_host_path(platforms) -> None:
    plat = platforms["real"]
    for url in ("unix:///etc/selfhost.sock", f"sqlite://{plat.root}/platform.db"):
        assert plat("config", "--app", "target", f"SELFHOST_QUEUE_URL={url}").code == 0
        submitted = plat("jobs.submit", "--app", "target", "--kind", "self-rebuild")
        assert submitted.code == 11, submitted.output
        assert "not one of the platform's queues" in submitted.stderr
    assert plat("config", "--app", "target", "--unset", "SELFHOST_QUEUE_URL").code == 0


def evil_slug(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name: str, kind_: bytes, target: str = "", data: bytes = b"") -> None:
            info = tarfile.TarInfo(name)
            info.type = kind_
            info.linkname = target
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("./app", tarfile.DIRTYPE)
        add("./app/Procfile", tarfile.REGTYPE, data=b"web: true\n")
        if kind == "chain":
            add("./app/a", tarfile.DIRTYPE)
            add("./app/a/b", tarfile.DIRTYPE)
            add("./app/a/b/l", tarfile.SYMTYPE, "x/../../..")
            add("./app/a/b/x", tarfile.SYMTYPE, "../..")
            add("./app/a/b/l/etc-pwned", tarfile.REGTYPE, data=b"x")
        else:
            info = tarfile.TarInfo("./app/zeros")
            info.size = 3_000_000_000  # 3 GB of zeros: a few MB compressed
            tar.addfile(info, _Zeros(info.size))
    return buf.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


@pytest.mark.parametrize("kind", ["chain", "bomb"])
def test_escaping_and_oversized_slugs_are_refused_at_upload(platforms, tmp_path, kind) -> None:
    plat = platforms["real"]
    path = tmp_path / f"{kind}.tgz"
    path.write_bytes(evil_slug(kind))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ApiRequestError) as refused:
        plat.client.release_slug(
            "target",
            path,
            checksum=f"SHA256:{digest}",
            size=path.stat().st_size,
            process_types={"web": "true"},
        )
    assert refused.value.status == 422 and refused.value.ident == "invalid_slug"
    assert (
        "more than 2000000000 bytes" in str(refused.value)
        if kind == "bomb"
        else "outside /app" in str(refused.value)
    )
