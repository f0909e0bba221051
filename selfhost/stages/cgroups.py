"""Resource limits for bubblewrap sandboxes, with the kernel's cgroups (v1 or v2).

Docker enforces a container's limits itself; bubblewrap has no such option, so each
limited sandbox gets its own cgroup, ``selfhost/<name>``:

- cgroup v2 (``/sys/fs/cgroup`` is ``cgroup2``): ``memory.max``, ``memory.swap.max``,
  ``cpu.max``, ``pids.max`` in ``/sys/fs/cgroup/selfhost/<name>``;
- cgroup v1: ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` where swap
  is accounted), ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` and ``pids.max`` in each
  controller's ``selfhost/<name>``.

The sandbox joins its cgroup before bubblewrap starts, by a tiny shell that writes its
own pid into ``cgroup.procs`` and then ``exec``s bwrap, so every process of the sandbox
is accounted (no ``preexec_fn``, which is unsafe in threaded programs). Afterwards
:meth:`Cgroup.facts` tells whether the OOM killer fired and how often the CPU quota
throttled the sandbox; :meth:`Cgroup.remove` deletes the cgroup.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfhost.errors import EngineError

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def version(root: Path = ROOT) -> int:
    """2 for the unified hierarchy, 1 for the legacy one, 0 when there is no cgroupfs."""
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "memory").is_dir() or (root / "cpu").is_dir():
        return 1
    return 0


@dataclass
class Cgroup:
    """One sandbox's cgroup, in every controller directory that carries a limit."""

    name: str
    dirs: dict[str, Path]  # controller ("memory", "cpu", "pids", or "unified") -> directory
    v: int

    @classmethod
    def create(
        cls,
        name: str,
        *,
        memory_bytes: int | None,
        cpus: float | None,
        pids: int | None,
        root: Path = ROOT,
    ) -> Cgroup:
        """Create the cgroup and write its limits; raise EngineError if that fails."""
        v = version(root)
        if v == 0:
            raise EngineError(
                f"cannot enforce dyno limits: no cgroup filesystem at {root}",
                hint="mount cgroups, or use --engine docker",
            )
        try:
            if v == 2:
                return cls._create_v2(name, memory_bytes, cpus, pids, root)
            return cls._create_v1(name, memory_bytes, cpus, pids, root)
        except OSError as exc:
            raise EngineError(
                f"cannot create cgroup selfhost/{name}: {exc}",
                hint="limits need root and a writable /sys/fs/cgroup; or use --engine docker",
            ) from None

    @classmethod
    def _create_v2(
        cls, name: str, memory: int | None, cpus: float | None, pids: int | None, root: Path
    ) -> Cgroup:
        parent = root / "selfhost"
        parent.mkdir(exist_ok=True)
        available = set((root / "cgroup.controllers").read_text().split())
        wanted = [c for c in ("memory", "cpu", "pids") if c in available]
        with contextlib.suppress(OSError):
            (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
        path = parent / name
        path.mkdir(exist_ok=True)
        if memory:
            (path / "memory.max").write_text(str(memory))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        if cpus:
            (path / "cpu.max").write_text(f"{int(cpus * PERIOD_US)} {PERIOD_US}")
        if pids:
            (path / "pids.max").write_text(str(pids))
        return cls(name, {"unified": path}, 2)

    @classmethod
    def _create_v1(
        cls, name: str, memory: int | None, cpus: float | None, pids: int | None, root: Path
    ) -> Cgroup:
        dirs: dict[str, Path] = {}
        if memory:
            path = root / "memory" / "selfhost" / name
            path.mkdir(parents=True, exist_ok=True)
            (path / "memory.limit_in_bytes").write_text(str(memory))
            memsw = path / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # swap accounting on: no swapping past the limit either
                memsw.write_text(str(memory))
            dirs["memory"] = path
        if cpus:
            path = root / "cpu" / "selfhost" / name
            path.mkdir(parents=True, exist_ok=True)
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(int(cpus * PERIOD_US)))
            dirs["cpu"] = path
        if pids and (root / "pids").is_dir():
            path = root / "pids" / "selfhost" / name
            path.mkdir(parents=True, exist_ok=True)
            (path / "pids.max").write_text(str(pids))
            dirs["pids"] = path
        return cls(name, dirs, 1)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into this cgroup."""
        moves = " && ".join(
            f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in self.dirs.values()
        )
        return ["/bin/sh", "-c", f'{moves} && exec "$@"', "selfhost-cgroup", *argv]

    def facts(self) -> dict[str, Any]:
        """What the kernel recorded: OOM kills, CPU throttling, peak memory."""
        out: dict[str, Any] = {"oom_killed": False, "cpu_throttled": 0}
        if self.v == 2:
            path = self.dirs["unified"]
            out["oom_killed"] = _field(path / "memory.events", "oom_kill") > 0
            out["cpu_throttled"] = _field(path / "cpu.stat", "nr_throttled")
            with contextlib.suppress(OSError, ValueError):
                out["memory_peak"] = int((path / "memory.peak").read_text())
        else:
            if "memory" in self.dirs:
                path = self.dirs["memory"]
                # "oom_kill N" is in memory.oom_control since Linux 4.13
                out["oom_killed"] = _field(path / "memory.oom_control", "oom_kill") > 0
                out["memory_peak"] = _int(path / "memory.max_usage_in_bytes")
            if "cpu" in self.dirs:
                out["cpu_throttled"] = _field(self.dirs["cpu"] / "cpu.stat", "nr_throttled")
        return out

    def remove(self) -> None:
        """Delete the cgroup (retrying briefly while the last processes are reaped)."""
        for path in self.dirs.values():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _field(path: Path, key: str) -> int:
    try:
        m = re.search(rf"^{re.escape(key)} (\d+)$", path.read_text(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: parse after it.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
