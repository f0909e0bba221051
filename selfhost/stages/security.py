"""How sandboxes are locked down: host ids, capabilities, seccomp, no_new_privs.

Every sandbox (a stage's build step, a dyno) runs code nobody reviewed, so none of it
may keep host privileges (``docs/security.md`` is the full model):

- **Unprivileged host ids.** A sandbox runs as a host uid and gid from the platform's
  sandbox range (``selfhost.sandbox_uid_base``, ``selfhost.sandbox_uid_count``), which
  no host user may own: build steps as the first id, each app's dynos as an id of their
  own. bubblewrap is started *as that id* (``setpriv``), as Flatpak starts it, so its
  user namespace maps the sandbox's uid 0 to that id; Docker containers run as it.
- **No capabilities, no_new_privs, no new user namespaces** (``--disable-userns``).
- **A seccomp filter** in the spirit of Docker's default profile: no mount, no new
  namespaces, no keyctl, bpf, perf, kernel modules, clock or reboot... (see
  :data:`DENIED`). It is built with libseccomp's own Python bindings (Debian's
  ``python3-seccomp``, run by ``/usr/bin/python3``) and handed to bubblewrap as BPF;
  Docker applies its default profile.

The attack suite needs to show each attack *succeeding* against a weakened sandbox
(root, every capability, no filter, the host network: what selfhost did before). That
mode exists only for it: ``SELFHOST_INSECURE_SANDBOX_FOR_TESTS=1`` in the environment,
and every sandbox started that way is logged as insecure.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from selfhost.errors import EngineError, UsageError
from selfhost.hashing import digest_json

INSECURE_ENV = "SELFHOST_INSECURE_SANDBOX_FOR_TESTS"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-seccomp installs

#: Syscalls a sandboxed process may not make (EPERM), beyond what no capabilities and
#: no_new_privs already forbid: Docker's default profile denies the same families.
DENIED = (
    # mounts and the root: a sandbox's view of the file system is fixed from outside
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # new namespaces or joining others (clone with CLONE_NEW* is filtered below)
    "unshare",
    "setns",
    # the kernel keyring, BPF programs, performance counters, userfaultfd
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    # kernel modules, kexec, reboot, swap, accounting, quotas
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    # the system clock, the kernel log, raw I/O ports, the controlling terminal
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "iopl",
    "ioperm",
    "vhangup",
    # file handles (a way around mount boundaries), obsolete and risky interfaces
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "nfsservctl",
    "uselib",
    "_sysctl",
    "sysfs",
    "ustat",
    "kcmp",
    # io_uring: its own path to many of the above, off in Docker too
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
#: clone() flags that create namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
#: NEWPID, NEWNET); clone3 answers ENOSYS so that libc falls back to clone, whose flags
#: the filter can read (clone3 passes them in memory).
CLONE_NAMESPACE_FLAGS = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)

_BUILD_FILTER = r"""
import errno, json, sys
import seccomp
policy = json.loads(sys.argv[1])
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
native = seccomp.system_arch()
if native == seccomp.Arch.X86_64:  # 32-bit programs get the same rules, not a free pass
    for arch in (seccomp.Arch.X86, seccomp.Arch.X32):
        try:
            f.add_arch(arch)
        except Exception:
            pass
for name in policy["denied"]:
    try:
        f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    except (RuntimeError, ValueError, OSError):
        pass  # not a syscall on this architecture
f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
for bit in policy["clone_flags"]:
    f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
with open(policy["out"], "wb") as out:
    f.export_bpf(out)
"""


@dataclass(frozen=True)
class SandboxIds:
    """The range of host ids sandboxes run as (uid and gid are the same number)."""

    base: int
    count: int

    @property
    def build(self) -> int:
        """The host id of stage build steps."""
        return self.base

    def app(self, number: int) -> int:
        """The host id of the dynos of the app with this number (1, 2, ...)."""
        if not 1 <= number < self.count:
            raise UsageError(
                f"app number {number} is outside the sandbox id range "
                f"({self.count - 1} apps at most)",
                hint="raise selfhost.sandbox_uid_count",
            )
        return self.base + number

    def check(self) -> None:
        """Refuse a range that a host user or group owns: a sandbox would be that user."""
        last = self.base + self.count - 1
        if self.base < 65536 or last > 0xFFFFFFFE:
            raise UsageError(
                f"sandbox id range {self.base}..{last} is not usable",
                hint="use ids between 65536 and 4294967294 that no host user "
                "owns (selfhost.sandbox_uid_base, selfhost.sandbox_uid_count)",
            )
        owners = [
            f"{u.pw_name} ({u.pw_uid})" for u in pwd.getpwall() if self.base <= u.pw_uid <= last
        ]
        if owners:
            raise UsageError(
                f"host users own ids in the sandbox range {self.base}..{last}: "
                f"{', '.join(owners[:5])}",
                hint="choose another selfhost.sandbox_uid_base: sandboxed code "
                "must not run as an existing user",
            )


@dataclass(frozen=True)
class Security:
    """The lock-down every engine applies (see the module docstring)."""

    ids: SandboxIds
    seccomp: Path | None  # the BPF program for bubblewrap (None: no filter)
    hardened: bool = True  # False only for the attack suite's weakened sandbox

    @property
    def drops_privileges(self) -> bool:
        """Sandboxes switch to an unprivileged host id (possible only when we are root)."""
        return self.hardened and os.geteuid() == 0

    def host_id(self, wanted: int) -> int:
        """The host id a sandbox really runs as: ``wanted`` (0, unset, means the build
        id: never root), or ours when we cannot switch (an unprivileged user's sandboxes
        map to that user), or root in the weakened sandbox."""
        if not self.hardened:
            return 0
        if os.geteuid() != 0:
            return os.geteuid()
        return wanted or self.ids.build


def hand_over(security: Security, host_id: int, *paths: Path) -> None:
    """Give work directories to the sandbox's host id (``chown -R``), so that it can
    write there and nowhere else; nothing to do when sandboxes keep our own id."""
    if not security.drops_privileges or not paths:
        return
    _chown(f"{host_id}:{host_id}", paths)


def hand_over_new(security: Security, host_id: int, *directories: Path) -> None:
    """:func:`hand_over` for empty directories just made: a ``chown`` each, in-process
    (a dyno's start is on the clock; ``chown -R`` is a program)."""
    if security.drops_privileges:
        for directory in directories:
            os.lchown(directory, host_id, host_id)


def take_back(security: Security, path: Path) -> None:
    """A finished tree belongs to root again (``chown -R 0:0``), and loses any setuid
    or setgid bit: a sandbox may leave neither writable nor privileged files behind.
    (The attack suite's weakened sandbox keeps what it made, to show why.)"""
    if not security.hardened:
        return
    if security.drops_privileges:
        _chown("0:0", [path])
    for directory, _, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o6000:
                os.chmod(full, stat.S_IMODE(st.st_mode) & ~0o6000)


def _chown(owner: str, paths: Iterable[Path]) -> None:
    # -h -P: links themselves, never what they point to; never traverse them
    proc = subprocess.run(
        ["chown", "-R", "-h", "-P", owner, "--", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise EngineError(
            f"cannot change the owner of sandbox files to {owner}",
            details=proc.stderr.strip()[-400:],
        )


def insecure_requested() -> bool:
    """True when the attack suite asked for the weakened sandbox."""
    return os.environ.get(INSECURE_ENV) == "1"


def policy() -> dict[str, object]:
    """The filter's definition (its digest names the cached BPF file)."""
    return {"format": 1, "denied": sorted(DENIED), "clone_flags": list(CLONE_NAMESPACE_FLAGS)}


def seccomp_filter(cache: Path) -> Path:
    """The BPF program of :func:`policy` for this machine, built once into ``cache``."""
    path = cache / f"seccomp-{digest_json(policy())[:16]}-{os.uname().machine}.bpf"
    if path.is_file() and path.stat().st_size > 0:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    python = SYSTEM_PYTHON if Path(SYSTEM_PYTHON).exists() else sys.executable
    proc = subprocess.run(
        [python, "-c", _BUILD_FILTER, json.dumps({**policy(), "out": str(tmp)})],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        missing = "No module named 'seccomp'" in proc.stderr
        raise EngineError(
            "cannot build the sandbox's seccomp filter"
            + (f": {python} has no libseccomp bindings" if missing else ""),
            details=proc.stderr.strip()[-600:],
            hint="apt-get install python3-seccomp (./setup installs it)",
        )
    os.replace(tmp, path)
    return path


def load(cache: Path, ids: SandboxIds, *, log: object = None) -> Security:
    """The security of this process's sandboxes, with the seccomp filter cached in
    ``cache``; the weakened sandbox when the attack suite asked for it."""
    if insecure_requested():
        if callable(log):
            log(
                f"WARNING: {INSECURE_ENV}=1: sandboxes run as root with every capability, "
                "no seccomp filter and the host network (the attack suite's weakened mode)"
            )
        return Security(ids=ids, seccomp=None, hardened=False)
    ids.check()
    return Security(ids=ids, seccomp=seccomp_filter(cache))
