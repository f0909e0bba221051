"""Stacks: pinned Debian root filesystems that builds and dynos run on (like Cedar).

A stack is defined by a suite, a debootstrap variant, an architecture and a package
list (the base packages plus what recipes declare). Its *digest* is the sha256 of that
definition, and it names the stack on disk and as a Docker image
(``selfhost/stack:<digest>``). The mirror is not part of the definition: it is read
from the machine's apt sources (or ``selfhost.mirror``) when the stack is built.

On disk, under the stacks directory::

    <digest>/rootfs/       the debootstrapped root filesystem (never written by builds)
    <digest>/stack.json    definition, installed package versions, packages_digest
    <digest>.log           debootstrap's output
    <digest>.lock          held while the stack is being built
    tmp-<digest>-<pid>/    a build in progress (removed when a new build starts)

The *identity* recorded in every manifest is the definition digest plus
``packages_digest``, the sha256 of every installed package and version, which catches
a mirror that moved under the same definition.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfhost.errors import StackError
from selfhost.hashing import digest_json
from selfhost.workspace import file_lock

FORMAT = 1
#: Directories every sandbox mounts over; they must exist in the read-only rootfs.
MOUNT_POINTS = ("/build", "/out", "/app")


def debian_arch() -> str:
    """The Debian name of this machine's architecture."""
    machine = _platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386"}.get(
        machine, machine
    )


@dataclass(frozen=True)
class StackSpec:
    """The definition of a stack; equal definitions share one stack on disk."""

    suite: str
    variant: str
    packages: tuple[str, ...]
    arch: str = ""

    @classmethod
    def make(cls, suite: str, variant: str, packages: Iterable[str], arch: str = "") -> StackSpec:
        """Normalise: sorted, de-duplicated packages and the host architecture by default."""
        return cls(suite, variant, tuple(sorted(set(packages))), arch or debian_arch())

    def definition(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "suite": self.suite,
            "variant": self.variant,
            "arch": self.arch,
            "packages": list(self.packages),
        }

    @property
    def digest(self) -> str:
        return digest_json(self.definition())

    @property
    def name(self) -> str:
        """A readable name: ``bookworm-minbase-<first 12 hex digits of the digest>``."""
        return f"{self.suite}-{self.variant}-{self.digest[:12]}"


@dataclass(frozen=True)
class Stack:
    """A built stack on disk."""

    spec: StackSpec
    root: Path  # <stacks>/<digest>
    installed: dict[str, str]  # package -> version
    packages_digest: str
    build_seconds: float

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def image(self) -> str:
        """The Docker image this stack is imported as."""
        return f"selfhost/stack:{self.spec.digest}"

    @property
    def identity(self) -> dict[str, Any]:
        """What manifests record about the stack, and what cache keys include."""
        return {
            "name": self.spec.name,
            "digest": self.spec.digest,
            "suite": self.spec.suite,
            "variant": self.spec.variant,
            "arch": self.spec.arch,
            "packages_digest": self.packages_digest,
        }

    def versions(self, packages: Iterable[str]) -> dict[str, str | None]:
        """Installed versions of the given packages (None if missing)."""
        return {p: self.installed.get(p) for p in packages}

    def ensure_mount_points(self, paths: Iterable[str]) -> None:
        """Create empty directories the sandboxes mount over (a read-only root can't).

        They are the only change ever made to a built rootfs, are empty, and are not
        part of the stack's identity. They are 0755 whatever the umask: an unprivileged
        bubblewrap must be able to pass through them.
        """
        for path in (*MOUNT_POINTS, *paths):
            current = self.rootfs
            for part in Path(path.lstrip("/")).parts:
                current = current / part
                if not current.is_dir():
                    current.mkdir(exist_ok=True)
                    os.chmod(current, 0o755)


class StackStore:
    """Builds and finds stacks under one directory."""

    def __init__(self, root: Path, mirror: Callable[[], str]):
        self.root = root
        self._mirror = mirror

    def path(self, spec: StackSpec) -> Path:
        return self.root / spec.digest

    def load(self, spec: StackSpec) -> Stack | None:
        """Return the stack if it is built, else None."""
        meta = self.path(spec) / "stack.json"
        if not meta.is_file():
            return None
        data = json.loads(meta.read_text())
        return Stack(
            spec,
            self.path(spec),
            data["installed"],
            data["packages_digest"],
            data.get("build_seconds", 0.0),
        )

    def load_digest(self, digest: str) -> Stack | None:
        """A built stack found by its digest (as recorded in manifests and slugs)."""
        try:
            data = json.loads((self.root / digest / "stack.json").read_text())
        except (OSError, ValueError):
            return None
        spec = StackSpec(data["suite"], data["variant"], tuple(data["packages"]), data["arch"])
        return self.load(spec) if spec.digest == digest else None

    def ensure(self, spec: StackSpec, log: Callable[[str], None] = lambda _: None) -> Stack:
        """Return the stack, building it with debootstrap first if needed."""
        stack = self.load(spec)
        if stack:
            return stack
        with file_lock(
            self.root / f"{spec.digest}.lock",
            wait=3600,
            what=f"stack {spec.name}",
            on_wait=log,
            setting="selfhost.stacks_dir",
        ):
            stack = self.load(spec)  # somebody else may have built it while we waited
            return stack or self._build(spec, log)

    def _build(self, spec: StackSpec, log: Callable[[str], None]) -> Stack:
        if os.geteuid() != 0:
            raise StackError(
                "building a stack needs root (debootstrap creates device nodes and chroots)",
                hint="run as root",
            )
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).exists():
            raise StackError(
                "debootstrap is not installed",
                hint="apt-get install debootstrap (the README's setup does this)",
            )
        for stale in self.root.glob(f"tmp-{spec.digest}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = self.root / f"tmp-{spec.digest}-{os.getpid()}"
        rootfs = staging / "rootfs"
        rootfs.mkdir(parents=True)
        mirror = self._mirror()
        argv = [debootstrap, f"--variant={spec.variant}", f"--arch={spec.arch}"]
        if spec.packages:
            argv.append("--include=" + ",".join(spec.packages))
        argv += [spec.suite, str(rootfs), mirror]
        log_path = self.root / f"{spec.digest}.log"
        log(
            f"stack: debootstrap {spec.suite} ({spec.variant}, {len(spec.packages)} packages) "
            f"into {self.path(spec)}; log: {log_path}"
        )
        started = time.monotonic()
        with open(log_path, "wb") as out:
            out.write(("+ " + " ".join(argv) + "\n").encode())
            out.flush()
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            shutil.rmtree(staging, ignore_errors=True)
            raise StackError(
                f"debootstrap of {spec.suite} failed (exit {proc.returncode})",
                details="last lines of " + str(log_path) + ":\n" + "\n".join(tail),
                hint="check the package names in the recipe and that the mirror "
                "(selfhost.mirror or apt sources) serves this suite",
            )
        installed = _installed_packages(rootfs)
        missing = [p for p in spec.packages if p not in installed]
        if missing:
            shutil.rmtree(staging, ignore_errors=True)
            raise StackError(f"packages missing after debootstrap: {', '.join(missing)}")
        # Downloaded .debs are not part of the stack: drop them to keep it small.
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        stack = Stack(spec, self.path(spec), installed, digest_json(installed), seconds)
        stack_json = {
            **spec.definition(),
            "digest": spec.digest,
            "name": spec.name,
            "packages_digest": stack.packages_digest,
            "installed": installed,
            "build_seconds": round(seconds, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / "stack.json").write_text(json.dumps(stack_json, indent=2) + "\n")
        Stack(spec, staging, installed, stack.packages_digest, seconds).ensure_mount_points(())
        target = self.path(spec)
        if target.exists():  # a half-removed old stack without stack.json
            shutil.rmtree(target)
        os.rename(staging, target)
        log(f"stack: {spec.name} built in {seconds:.0f}s ({len(installed)} packages)")
        return stack


def _installed_packages(rootfs: Path) -> dict[str, str]:
    """Read package versions from the rootfs' dpkg database, without chrooting."""
    proc = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={rootfs}/var/lib/dpkg",
            "-W",
            "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise StackError(f"cannot read the stack's package list: {proc.stderr.strip()}")
    installed = {}
    for line in proc.stdout.splitlines():
        name, version, status = [*line.split("\t"), "", ""][:3]
        if status.startswith("ii"):
            installed[name] = version
    return dict(sorted(installed.items()))
