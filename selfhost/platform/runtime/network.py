"""Dyno networking: a network namespace per dyno, connected by pasta, with a policy.

Each dyno gets a network namespace of its own, created by the daemon (owned by the
host's user namespace, so nothing inside can reconfigure it) and connected with
``pasta`` (Debian's ``passt``: user-mode networking, as rootless Podman uses it):

- **inbound**: only the dyno's ``$PORT`` (web and distccd dynos), forwarded from a host
  loopback port (``-t 127.0.0.1/P:P``); nothing else on the host reaches the dyno;
- **to the host**: only the listed host loopback ports are spliced into the dyno's own
  loopback (``-T``): the platform API (for its app-scoped token), the app's listening
  dynos (distccd peers, web) and the app's Redis queue. ``--no-map-gw`` keeps the
  gateway address from reaching any other host port;
- **outbound**: by default nothing; an app whose ``SELFHOST_NETWORK`` config var is
  ``internet`` may reach the outside, but never an address of this machine (its other
  interfaces: pasta would connect to them from the host) nor a loopback port it was not
  given.

pasta alone cannot stop a connection to one of the host's own non-loopback addresses
(``docker0``'s, say): it makes that connection from the host. So each namespace also
gets an nftables ruleset of its own, installed by the daemon (``nft`` in the namespace,
which belongs to the host's user namespace: nothing in the dyno can change it):
output to loopback is accepted (the spliced ports), replies are accepted, and the rest
is rejected, or, for ``internet`` apps, accepted unless it goes to a host address.

Creating a namespace and starting pasta for it takes 20-30 ms, so namespaces for
one-off dynos are prepared ahead, a few per policy (:class:`NetworkPool`): a one-off
dyno starts in an already connected namespace. pasta processes are recorded in
``net/<pid>.pasta`` under the platform directory and killed when their dyno ends, and
at daemon start if a killed daemon left them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from selfhost.errors import EngineError
from selfhost.syscalls import CLONE_NEWNET, check, libc

PASTA = "/usr/bin/pasta"
NFT = "/usr/sbin/nft"
NSENTER = "/usr/bin/nsenter"
POOL_SIZE = 2
POOL_IDLE_SECONDS = 300.0  # an unused policy's prepared namespaces are dropped after this


@dataclass(frozen=True)
class Policy:
    """What a dyno's network namespace may reach (see the module docstring)."""

    host_ports: tuple[int, ...] = ()  # host loopback ports spliced into the dyno
    inbound: tuple[str, int] | None = None  # (host address, port) forwarded to $PORT
    outbound: bool = False  # may connect beyond the machine

    def nft_rules(self, host_addresses: list[str]) -> str:
        """The namespace's own firewall (see the module docstring)."""
        rules = ['oifname "lo" accept', "ct state established,related accept"]
        if self.outbound:
            if host_addresses:
                rules.append(f"ip daddr {{ {', '.join(host_addresses)} }} reject")
            rules += ["meta nfproto ipv4 accept"]
        rules.append("reject")
        body = "".join(f"    {rule}\n" for rule in rules)
        return (
            "table inet selfhost {\n  chain output {\n"
            "    type filter hook output priority 0; policy drop;\n"
            f"{body}  }}\n}}\n"
        )

    def pasta_args(self) -> list[str]:
        args = ["--no-map-gw"]
        if not self.outbound:
            args += ["-o", "127.0.0.1"]  # besides the firewall: nothing leaves anyway
        args += [
            "-t",
            f"{self.inbound[0]}/{self.inbound[1]}:{self.inbound[1]}" if self.inbound else "none",
        ]
        args += ["-T", ",".join(map(str, sorted(set(self.host_ports)))) or "none"]
        return [*args, "-u", "none", "-U", "none"]


@dataclass
class Namespace:
    """A connected network namespace: an open descriptor and its pasta process."""

    fd: int
    pasta: int
    policy: Policy
    created: float = field(default_factory=time.monotonic)


def new_namespace() -> int:
    """A fresh network namespace, as an open descriptor (made on a throwaway thread:
    unshare moves only the calling thread, and the thread ends right after)."""
    result: list[int | BaseException] = []

    def make() -> None:
        try:
            check(libc.unshare(CLONE_NEWNET))
            result.append(
                os.open(
                    f"/proc/self/task/{threading.get_native_id()}/ns/net",
                    os.O_RDONLY | os.O_CLOEXEC,
                )
            )
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise EngineError(
            f"cannot create a network namespace: {result[0]}",
            hint="dyno networking needs root (the platform daemon runs as root)",
        )
    return result[0]


def host_addresses() -> list[str]:
    """This machine's own IPv4 addresses, loopback aside (``ip -j addr``)."""
    proc = subprocess.run(
        ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=False
    )
    try:
        interfaces = json.loads(proc.stdout or "[]")
    except ValueError:
        return []
    return sorted(
        {
            a["local"]
            for i in interfaces
            for a in i.get("addr_info", [])
            if a.get("local") and not a["local"].startswith("127.")
        }
    )


class Networks:
    """Creates, pools and removes the network namespaces of one platform's dynos."""

    def __init__(self, state: Path, keep: frozenset[int] = frozenset()):
        self.state = state  # <platform>/net: pid files of the pasta processes
        self.lock = threading.Lock()
        self.pool: dict[Policy, list[Namespace]] = {}
        self.used: dict[Policy, float] = {}
        self.filling: set[Policy] = set()
        self.closed = False  # shut down: what the pool still makes is let go at once
        self.fillers: list[threading.Thread] = []
        state.mkdir(parents=True, exist_ok=True)
        self.clean_stale(keep)

    def check(self) -> None:
        for tool, package in ((PASTA, "passt"), (NFT, "nftables")):
            if not os.path.exists(tool):
                raise EngineError(
                    f"{tool} is missing: dynos cannot get their network",
                    hint=f"apt-get install {package} (./setup installs it)",
                )

    def create(self, policy: Policy) -> Namespace:
        """A new namespace with pasta attached and configured (20-30 ms)."""
        self.check()
        return self._connect(new_namespace(), policy)

    def attach(self, pid: int, policy: Policy) -> Namespace:
        """Connect the network namespace a running process is in (a Docker container
        started with ``network_mode=none``)."""
        self.check()
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise EngineError(
                f"cannot open the network namespace of process {pid}: {exc.strerror}"
            ) from None
        return self._connect(fd, policy)

    def _connect(self, fd: int, policy: Policy) -> Namespace:
        """Start pasta for the namespace open at ``fd`` (which the result then owns)."""
        pidfile = self.state / f"tmp-{os.getpid()}-{time.monotonic_ns()}"
        argv = [
            PASTA,
            "--runas",
            "0",
            "--quiet",
            "-4",
            "--config-net",
            "--no-dhcp",
            "--no-ndp",
            "--no-dhcpv6",
            "--no-ra",
            *policy.pasta_args(),
            "-P",
            str(pidfile),
            "--netns",
            f"/proc/self/fd/{fd}",
            "--netns-only",
        ]
        proc = subprocess.run(argv, pass_fds=(fd,), capture_output=True, text=True, check=False)
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            os.close(fd)
            pidfile.unlink(missing_ok=True)
            if policy.inbound and port_in_use(*policy.inbound):
                address, port = policy.inbound
                raise EngineError(
                    f"the dyno's port {port} is in use on {address} by another process "
                    "on this host",
                    hint="stop it, or give this platform other ports (selfhost.dyno_port_base, "
                    "e.g. INVOKE_SELFHOST_DYNO_PORT_BASE=30000; app n's dynos listen on "
                    "dyno_port_base + 32 (n - 1) ...)",
                ) from None
            lines = [ln for ln in proc.stderr.splitlines() if "syslog" not in ln]
            raise EngineError(
                f"pasta could not connect the dyno's network (exit {proc.returncode})",
                details="\n".join(lines[-5:]),
            ) from None
        os.replace(pidfile, self.state / f"{pid}.pasta")
        namespace = Namespace(fd, pid, policy)
        try:
            self._firewall(namespace)
        except BaseException:
            self.release(namespace)
            raise
        return namespace

    def _firewall(self, namespace: Namespace) -> None:
        rules = namespace.policy.nft_rules(host_addresses())
        proc = subprocess.run(
            [NSENTER, f"--net=/proc/self/fd/{namespace.fd}", "--", NFT, "-f", "-"],
            input=rules,
            text=True,
            capture_output=True,
            pass_fds=(namespace.fd,),
            check=False,
        )
        if proc.returncode != 0:
            raise EngineError(
                "cannot install the dyno's network rules with nft",
                details=proc.stderr.strip()[-400:],
                hint="apt-get install nftables (./setup installs it)",
            )

    def take(self, policy: Policy) -> Namespace:
        """A connected namespace for ``policy``: a prepared one if there is, else new.
        The pool is topped up in the background."""
        with self.lock:
            ready = self.pool.get(policy) or []
            namespace = ready.pop(0) if ready else None
            self.used[policy] = time.monotonic()
        if namespace is None:
            namespace = self.create(policy)
        self._refill(policy)
        return namespace

    def _refill(self, policy: Policy) -> None:
        with self.lock:
            if policy in self.filling or self.closed:
                return
            self.filling.add(policy)

        def fill() -> None:
            try:
                while True:
                    with self.lock:
                        if len(self.pool.get(policy, [])) >= POOL_SIZE:
                            return
                    namespace = self.create(policy)
                    with self.lock:
                        if not self.closed:
                            self.pool.setdefault(policy, []).append(namespace)
                            continue
                    self.release(namespace)  # made while the platform shut down
                    return
            except EngineError:
                pass  # the next take creates one itself, and reports the error
            finally:
                with self.lock:
                    self.filling.discard(policy)

        filler = threading.Thread(target=fill, daemon=True, name="netns-pool")
        with self.lock:
            self.fillers = [t for t in self.fillers if t.is_alive()] + [filler]
        filler.start()

    def release(self, namespace: Namespace) -> None:
        """The dyno ended: stop its pasta, wait until it has exited (it holds the dyno's
        host port until then), and let the namespace go."""
        stop_process(namespace.pasta)
        (self.state / f"{namespace.pasta}.pasta").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.close(namespace.fd)

    def expire(self) -> None:
        """Drop prepared namespaces of policies nobody used for a while."""
        now = time.monotonic()
        with self.lock:
            stale = [p for p, t in self.used.items() if now - t > POOL_IDLE_SECONDS]
            dropped = [ns for p in stale for ns in self.pool.pop(p, [])]
            for p in stale:
                self.used.pop(p, None)
        for namespace in dropped:
            self.release(namespace)

    def shutdown(self) -> None:
        """Let every prepared namespace go; the pool makes no more. It waits for the
        namespaces being made (a pasta started as the daemon exits would outlive it)."""
        with self.lock:
            self.closed = True
            fillers = list(self.fillers)
        for filler in fillers:
            filler.join(timeout=10)
        with self.lock:
            dropped = [ns for ready in self.pool.values() for ns in ready]
            self.pool.clear()
        for namespace in dropped:
            self.release(namespace)

    def clean_stale(self, keep: frozenset[int] = frozenset()) -> None:
        """Kill the pasta processes a killed daemon left behind, by their pid files:
        ``<pid>.pasta``, and ``tmp-*`` (killed between pasta's start and the rename:
        the pid is in the file); except those of the dynos it adopts (``keep``)."""
        for path in [*self.state.glob("*.pasta"), *self.state.glob("tmp-*")]:
            with contextlib.suppress(ValueError, OSError):
                pid = int(path.stem if path.suffix == ".pasta" else path.read_text())
                if pid in keep:
                    continue
                if Path(f"/proc/{pid}/exe").resolve().name.startswith(("pasta", "passt")):
                    os.kill(pid, signal.SIGKILL)
            path.unlink(missing_ok=True)


def stop_process(pid: int, grace: float = 2.0) -> None:
    """SIGTERM to a process that is not our child (pasta daemonizes), and wait until it
    has exited; SIGKILL after ``grace`` seconds."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # already gone
        return
    try:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)
            ready, _, _ = select.select([pidfd], [], [], wait)
            if ready:  # a pidfd is readable once its process has exited
                return
    finally:
        os.close(pidfd)


def port_in_use(address: str, port: int) -> bool:
    """Whether something on this host listens on (or holds) ``address:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


#: Dyno port bases for a platform beside another on one host: not the default (20000),
#: and below the kernel's ephemeral ports (32768 and up), with room for 2048 ports.
SPARE_PORT_BASES = range(21 * 1024, 30 * 1024 + 1, 1024)  # 21504 .. 30720


def free_port_base(span: int, candidates: Iterable[int] = SPARE_PORT_BASES) -> int | None:
    """The first of ``candidates`` (values of ``selfhost.dyno_port_base``) whose ``span``
    ports from it nothing on this host holds; None if none is. For a platform beside
    another on one host (the tests' and the benchmarks', beside a developer's own)."""
    for base in candidates:
        if not any(port_in_use("127.0.0.1", p) for p in range(base, base + span)):
            return base
    return None
