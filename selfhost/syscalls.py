"""The Linux system calls that Python's ``os`` lacks (mount, umount2, setns, unshare,
prctl, fallocate), through one ctypes handle on the C library, with their flags."""

from __future__ import annotations

import ctypes
import os
from typing import Any

#: the C library already in the process (the interpreter links it): errno is kept
libc: Any = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def check(result: int, *where: str) -> None:
    """Raise the call's errno as an OSError (naming ``where``) unless it returned 0."""
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), *where)
