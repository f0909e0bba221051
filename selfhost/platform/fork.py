"""Cloud processes: a dyno forks child dynos of its own release, reads their output as a
pipe, waits for their exit codes, kills them.

Shipped in every slug as ``/app/vendor/selfhost/python/selfhost_fork.py`` (on
``PYTHONPATH``) and ``/app/vendor/selfhost/bin/fork`` (on ``PATH``), through
``.profile.d/000-selfhost.sh``; standard library only, so any stack's ``python3`` runs
it. It talks to the platform API with the dyno's own environment::

    SELFHOST_API_URL    the API, reachable from every dyno
    SELFHOST_API_TOKEN  the dyno's token, scoped to its app (revoked when it ends)
    SELFHOST_APP        the app

From any language, the command::

    fork run [--size S] [--ttl SECONDS] [--env K=V]... -- CMD [ARG...]
        fork a child, copy its output to stdout as it comes, exit with its exit code
        (popen("fork run -- ./worker 3") is a pipe from a process in the cloud)
    fork start [...] -- CMD [ARG...]    fork a child; print its dyno id
    fork cat ID | fork wait ID | fork kill ID
    fork ps                             this app's dynos: PID, PPID, STATE, CMD

From Python::

    from selfhost_fork import fork
    child = fork(["./montecarlo", "--child", "1000000"])
    for chunk in child.stdout():   # bytes, as the child writes them
        ...
    code = child.wait()

The platform makes the forking dyno the child's parent (``ppid``): stopping or losing
the parent stops the child; a child lives no longer than its parent's time to live; an
app has at most ``selfhost.dyno_max_children`` live children (HTTP 429 past that).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

ACCEPT = "application/vnd.heroku+json; version=3"


class ForkError(Exception):
    """The platform refused, or could not be reached: its message says why."""


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ForkError(f"{name} is not set: fork works inside a dyno of the platform")
    return value


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        _env("SELFHOST_API_URL") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Bearer " + _env("SELFHOST_API_TOKEN"),
            "Accept": ACCEPT,
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            data = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["message"]
        except (ValueError, KeyError, OSError):
            message = exc.reason
        raise ForkError(f"{method} {path}: {exc.code}: {message}") from None
    except OSError as exc:
        raise ForkError(f"{method} {path}: the platform API did not answer: {exc}") from None
    return json.loads(data) if data else None


class Child:
    """A child dyno."""

    def __init__(self, info: dict[str, Any]):
        self.info = info
        self.id: str = info["id"]
        self.name: str = info["name"]
        self.pid: int = info.get("pid", 0)

    def _path(self) -> str:
        return f"/apps/{_env('SELFHOST_APP')}/dynos/{self.id}"

    def stdout(self) -> Iterator[bytes]:
        """Its output (stdout and stderr), as it comes, until it ends."""
        url = self.info.get("attach_http_url")
        if not url:
            raise ForkError(f"{self.name} has no output URL (is it a child of this dyno?)")
        try:
            with urllib.request.urlopen(url, timeout=None) as resp:
                while True:
                    chunk = resp.read1(65536)
                    if not chunk:
                        return
                    yield chunk
        except urllib.error.HTTPError as exc:
            raise ForkError(f"reading {self.name}'s output: {exc.code} {exc.reason}") from None

    def poll(self) -> int | None:
        """Its exit code once it has ended, else None."""
        self.info = _call("GET", self._path())
        if self.info["state"] in ("starting", "up"):
            return None
        code = self.info.get("exit_code")
        return 1 if code is None else int(code)

    def wait(self, timeout: float | None = None) -> int:
        """Wait until it has ended; its exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            code = self.poll()
            if code is not None:
                return code
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still runs after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def kill(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after the platform's grace); its children too."""
        _call("POST", self._path() + "/actions/stop")


def fork(
    command: str | list[str],
    *,
    size: str | None = None,
    ttl: float | None = None,
    env: dict[str, str] | None = None,
) -> Child:
    """Start a child dyno of this dyno's release running ``command``."""
    line = command if isinstance(command, str) else shlex.join(command)
    body: dict[str, Any] = {"command": line, "type": "run", "attach": False}
    if size:
        body["size"] = size
    if ttl:
        body["time_to_live"] = ttl
    if env:
        body["env"] = env
    return Child(_call("POST", f"/apps/{_env('SELFHOST_APP')}/dynos", body))


def child(ident: str) -> Child:
    return Child(_call("GET", f"/apps/{_env('SELFHOST_APP')}/dynos/{ident}"))


USAGE = """usage: fork run [--size S] [--ttl SECONDS] [--env K=V]... -- CMD [ARG...]
       fork start [options] -- CMD [ARG...]
       fork cat ID | fork wait ID | fork kill ID | fork ps"""


def _options(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    options: dict[str, Any] = {"env": {}}
    while args and args[0] != "--":
        flag = args.pop(0)
        if not flag.startswith("-"):
            raise ForkError(f"no command: put it after -- (fork run -- {flag} ...)\n{USAGE}")
        if flag not in ("--size", "--ttl", "--env") or not args:
            raise ForkError(f"unknown option or missing value: {flag}\n{USAGE}")
        value = args.pop(0)
        if flag == "--size":
            options["size"] = value
        elif flag == "--ttl":
            try:
                options["ttl"] = float(value)
            except ValueError:
                raise ForkError(f"--ttl takes seconds, got {value!r}") from None
        else:
            key, sep, val = value.partition("=")
            if not sep or not key:
                raise ForkError(f"--env takes KEY=VALUE, got {value!r}")
            options["env"][key] = val
    if not args or len(args) < 2:
        raise ForkError(f"no command: put it after --\n{USAGE}")
    return options, args[1:]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help"):
            print(USAGE)
            return 0 if args else 2
        verb, rest = args[0], args[1:]
        if verb in ("run", "start"):
            options, command = _options(rest)
            started = fork(command, **options)
            if verb == "start":
                print(started.id)
                return 0
            out = sys.stdout.buffer
            for chunk in started.stdout():
                out.write(chunk)
                out.flush()
            return started.wait()
        if verb in ("cat", "wait", "kill") and len(rest) == 1:
            found = child(rest[0])
            if verb == "cat":
                for chunk in found.stdout():
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                return 0
            if verb == "wait":
                code = found.wait()
                print(code)
                return code
            found.kill()
            return 0
        if verb == "ps" and not rest:
            dynos = _call("GET", f"/apps/{_env('SELFHOST_APP')}/dynos")
            print(f"{'PID':>6} {'PPID':>6} {'STATE':<8} CMD")
            for d in sorted(dynos, key=lambda d: d.get("pid", 0)):
                print(f"{d.get('pid', 0):>6} {d.get('ppid', 0):>6} {d['state']:<8} {d['command']}")
            return 0
        raise ForkError(USAGE)
    except ForkError as exc:
        print(f"fork: {exc}", file=sys.stderr)
        return 125
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
