"""What a dyno's processes are doing, read from /proc without touching the dyno.

The router and the dyno manager both ask two questions of a web dyno:

- :func:`listening`: has it bound ``$PORT``? A dyno's port on the host is pasta's,
  which accepts connections whether or not the app listens inside; the truth is in
  the dyno's own network namespace, which ``/proc/<pid>/net/tcp`` of any process in it
  shows. A read of a few hundred bytes, no connection, nothing the app can see.
- :func:`frozen`: is any of its processes stopped (``SIGSTOP``, a debugger)? A stopped
  server still completes TCP handshakes in the kernel (its listen backlog), so no
  connection probe can tell; its state in ``/proc/<pid>/stat`` can.
"""

from __future__ import annotations

import os

#: /proc/net/tcp's state column: 0A is LISTEN
_LISTEN = "0A"


def listening(pid: int, port: int) -> bool:
    """Whether a socket listens on TCP ``port`` in the network namespace of ``pid``.

    The kernel lists listening sockets first (its listening hash, then the established
    one), so the read stops at the first socket in another state: a busy server's
    thousands of TIME_WAIT lines are neither generated nor parsed (they made this a 2 ms
    call, every 100 ms, in the router)."""
    want = f":{port:04X}"
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii", buffering=4096) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split(None, 4)
                    if len(fields) < 4 or fields[3] != _LISTEN:
                        break
                    if fields[1].endswith(want):
                        return True
        except OSError:
            continue
    return False


def in_namespace(pid: int, netns: int) -> bool:
    """Whether ``pid`` is in the network namespace with inode ``netns`` (0: any; a
    dyno that shares the host's network has no namespace of its own)."""
    if not netns:
        return True
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == netns
    except OSError:
        return False


def bound(pid: int, port: int, netns: int = 0) -> bool:
    """Whether the dyno whose namespace ``pid`` is in listens on ``port``."""
    return in_namespace(pid, netns) and listening(pid, port)


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    state = _state(pid)
    return state is not None and state not in "ZX"


def frozen(pid: int) -> bool:
    """Whether ``pid`` or any process below it is stopped (state T or t)."""
    todo = [pid]
    seen = 0
    while todo and seen < 4096:
        current = todo.pop()
        seen += 1
        if _state(current) in ("T", "t"):
            return True
        todo += _children(current)
    return False


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # the command name is in parentheses and may contain anything: the state follows
    rest = stat[stat.rfind(")") + 2 :]
    return rest[:1] or None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                out += [int(child) for child in f.read().split()]
        except (OSError, ValueError):
            continue
    return out
