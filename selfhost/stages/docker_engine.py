"""The Docker engine, through the docker SDK, for users who prefer containers.

There is no registry: the stack's rootfs is streamed through ``tar`` into
``docker import`` once and tagged ``selfhost/stack:<stack digest>``. Containers run
as the sandbox's unprivileged host id with every capability dropped,
``no-new-privileges``, Docker's default seccomp profile, the root filesystem
read-only, ``network_mode=none``, a tmpfs ``/tmp``, the same hostname and the same
inner command as bubblewrap, and carry the label
``selfhost.sandbox`` so that containers orphaned by a killed run can be removed.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from selfhost.errors import EngineError
from selfhost.stages.engine import Output, RunResult, Sandbox, run_sandbox
from selfhost.stages.security import Security
from selfhost.stages.stack import Stack

LABEL = "selfhost.sandbox"
NO_DAEMON_HINT = (
    "start the Docker engine: apt-get install docker.io, then run `dockerd &` "
    "(or `systemctl start docker`); or build with --engine bwrap"
)


class DockerEngine:
    """Runs sandboxes as Docker containers."""

    name = "docker"

    def __init__(
        self,
        security: Security,
        *,
        base_url: str | None = None,
        echo: Callable[[Sequence[str]], None] | None = None,
    ):
        self.security = security
        self._base_url = base_url
        self._echo = echo or (lambda argv: None)
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self.check()
        return self._client

    def check(self) -> None:
        """Connect and ping the daemon; fail with the fix if nobody answers."""
        import docker  # imported lazily: bwrap users never pay for it

        try:
            client = (
                docker.DockerClient(base_url=self._base_url)
                if self._base_url
                else docker.from_env()
            )
            client.ping()
        except docker.errors.DockerException as exc:
            where = self._base_url or "the default socket (DOCKER_HOST or /var/run/docker.sock)"
            raise EngineError(
                f"no Docker daemon answers at {where}: {_short(exc)}", hint=NO_DAEMON_HINT
            ) from None
        self._client = client

    def prepare(self, stack: Stack, mount_points: Iterable[str] = ()) -> None:
        """Import the stack's rootfs as a local image, once."""
        import docker

        try:
            self.client.images.get(stack.image)
            return
        except docker.errors.ImageNotFound:
            pass
        stack.ensure_mount_points(mount_points)
        repository, tag = stack.image.split(":")
        tar = subprocess.Popen(
            ["tar", "-C", str(stack.rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
        )
        assert tar.stdout is not None
        chunks = iter(lambda: tar.stdout.read(1 << 20), b"")  # type: ignore[union-attr]
        try:
            self.client.api.import_image(
                src=chunks, repository=repository, tag=tag, stream_src=True
            )
        except docker.errors.DockerException as exc:
            raise EngineError(
                f"docker import of stack {stack.spec.name} failed: {_short(exc)}"
            ) from None
        finally:
            tar.stdout.close()
            tar.wait()

    def user(self, sandbox: Sandbox) -> int:
        """The uid (and gid) the container runs as: the sandbox's unprivileged host id
        (Docker maps no user namespace, so container root would be host root)."""
        return self.security.host_id(sandbox.host_id) if self.security.hardened else sandbox.uid

    def network_mode(self, sandbox: Sandbox) -> str:
        """``none``: a dyno's network is attached from outside (pasta), after start; the
        weakened sandbox of the attack suite gets Docker's bridge."""
        return "bridge" if sandbox.network and not self.security.hardened else "none"

    def _create_args(self, sandbox: Sandbox) -> dict[str, Any]:
        from docker.types import Mount as DockerMount

        kwargs: dict[str, Any] = {
            "image": sandbox.stack.image,
            "command": sandbox.inner_argv(),
            "working_dir": sandbox.workdir,
            "hostname": sandbox.hostname,
            "user": f"{self.user(sandbox)}:{self.user(sandbox)}",
            "read_only": True,
            "network_mode": self.network_mode(sandbox),
            "tmpfs": {d: "rw,exec,mode=1777" for d in sandbox.scratch},
            "init": True,  # docker-init as pid 1: forwards SIGTERM and reaps zombies
            "mounts": [
                DockerMount(m.target, str(m.source), type="bind", read_only=not m.writable)
                for m in sandbox.mounts
            ],
            "labels": {LABEL: sandbox.owner},
            **({"name": f"selfhost-{sandbox.label}"} if sandbox.label else {}),
            "detach": True,
        }
        if self.security.hardened:
            kwargs["cap_drop"] = ["ALL"]
            kwargs["security_opt"] = ["no-new-privileges"]
        limits = sandbox.limits
        if limits.memory_bytes:
            kwargs["mem_limit"] = limits.memory_bytes
            kwargs["memswap_limit"] = limits.memory_bytes  # no swap beyond the limit
        if limits.cpus:
            kwargs["nano_cpus"] = int(limits.cpus * 1e9)
        if limits.pids:
            kwargs["pids_limit"] = limits.pids
        return kwargs

    def command_line(self, sandbox: Sandbox) -> list[str]:
        """The equivalent ``docker run`` command line."""
        argv = [
            "docker",
            "run",
            "--rm",
            "--read-only",
            "--network",
            self.network_mode(sandbox),
            "--hostname",
            sandbox.hostname,
            "--user",
            f"{self.user(sandbox)}:{self.user(sandbox)}",
            "--init",
            "--workdir",
            sandbox.workdir,
        ]
        if self.security.hardened:
            argv += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        for scratch in sandbox.scratch:
            argv += ["--tmpfs", f"{scratch}:rw,exec,mode=1777"]
        for m in sandbox.mounts:
            argv += [
                "--mount",
                f"type=bind,src={m.source},dst={m.target}" + ("" if m.writable else ",readonly"),
            ]
        if sandbox.limits.memory_bytes:
            argv += [
                "--memory",
                str(sandbox.limits.memory_bytes),
                "--memory-swap",
                str(sandbox.limits.memory_bytes),
            ]
        if sandbox.limits.cpus:
            argv += ["--cpus", str(sandbox.limits.cpus)]
        return [*argv, sandbox.stack.image, *sandbox.inner_argv()]

    def start(self, sandbox: Sandbox, output: Output) -> DockerProcess:
        """Create and start the container; stream its output from a thread."""
        import docker

        self.prepare(sandbox.stack, sandbox.mount_targets())
        self._echo(self.command_line(sandbox))
        try:
            container = self.client.containers.create(**self._create_args(sandbox))
            container.start()
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot start the container: {_short(exc)}") from None
        pump = threading.Thread(target=_pump, args=(container, output), daemon=True)
        pump.start()
        return DockerProcess(container, pump)

    def run(self, sandbox: Sandbox, output: Output, *, timeout: float | None = None) -> RunResult:
        """Run a container to completion, streaming its output; kill it on timeout."""
        return run_sandbox(self, sandbox, output, timeout=timeout)

    def remove_orphans(self, owner: str) -> int:
        """Remove containers left by killed runs of ``owner``; returns how many.

        Call it only while holding the owner's lock: then none of them can be live.
        """
        import docker

        removed = 0
        for container in self.client.containers.list(
            all=True, filters={"label": f"{LABEL}={owner}"}
        ):
            try:
                container.remove(force=True)
                removed += 1
            except docker.errors.DockerException:
                pass
        return removed


class DockerProcess:
    """A running container."""

    def __init__(self, container: Any, pump: threading.Thread):
        self.container = container
        self.pump = pump
        self.pid = container.short_id
        self.stdin = None  # an attached Docker dyno is output only (no stdin yet)

    def wait(self, timeout: float | None = None) -> int | None:
        import requests

        try:
            result = self.container.wait(timeout=timeout) if timeout else self.container.wait()
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            return None
        self.pump.join(timeout=10)
        return int(result.get("StatusCode", 1))

    def namespace_pid(self) -> int:
        """The container's init process, as the host sees it."""
        self.container.reload()
        return int(self.container.attrs["State"]["Pid"])

    def terminate(self) -> bool:
        """SIGTERM to the command (docker-init forwards it; a bare pid 1 would ignore it)."""
        import docker

        with contextlib.suppress(docker.errors.DockerException):
            self.container.kill(signal="SIGTERM")
        return True

    def kill(self) -> None:
        import docker

        with contextlib.suppress(docker.errors.DockerException):
            self.container.kill()

    def close(self) -> dict[str, Any]:
        import docker

        facts: dict[str, Any] = {}
        with contextlib.suppress(docker.errors.DockerException):
            self.container.reload()
            facts["oom_killed"] = bool(self.container.attrs["State"].get("OOMKilled"))
        with contextlib.suppress(docker.errors.DockerException):
            self.container.remove(force=True)
        return facts


def _pump(container: Any, output: Output) -> None:
    for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
        output.write(chunk)
        output.flush()


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
