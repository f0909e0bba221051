"""The workspace lock: a second holder fails clearly, or waits."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from selfhost.errors import LockError
from selfhost.workspace import Workspace

HOLD = """
import sys, time
from pathlib import Path
from selfhost.workspace import Workspace
with Workspace(Path(sys.argv[1])).locked():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(root, seconds):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_fails_with_holder_pid(tmp_path):
    proc = hold(tmp_path, 30)
    try:
        with pytest.raises(LockError) as info, Workspace(tmp_path).locked(wait=0):
            pass
        assert f"pid {proc.pid}" in info.value.message
        assert "lock_wait" in (info.value.hint or "")
    finally:
        proc.kill()
        proc.wait()


def test_waiter_gets_the_lock_when_released(tmp_path):
    proc = hold(tmp_path, 1)
    messages = []
    started = time.monotonic()
    with Workspace(tmp_path).locked(wait=20, on_wait=messages.append):
        waited = time.monotonic() - started
    proc.wait()
    assert messages and "waiting up to 20s" in messages[0]
    assert 0.3 < waited < 10


def test_lock_of_a_killed_holder_is_free(tmp_path):
    proc = hold(tmp_path, 60)
    proc.kill()  # SIGKILL: the kernel drops the flock
    proc.wait()
    with Workspace(tmp_path).locked(wait=0):
        pass
