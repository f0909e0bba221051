"""A kept dyno's output (it outlives the daemon): the sandbox writes a file itself, the
daemon follows it into the dyno's buffer and the app's log, records how far it read,
and frees what it has read."""

from __future__ import annotations

import os
import time
from pathlib import Path

from selfhost.platform.runtime.dynos import AppLog, Dyno, DynoOutput, KeptOutput


def dyno() -> Dyno:
    return Dyno(
        id="d1",
        app="a",
        app_id="a1",
        name="web.1",
        type="web",
        command="x",
        size="basic",
        release_id="r",
        release_version=1,
        slug_sha="s",
        engine="bwrap",
    )


def test_the_output_file_is_followed_recorded_and_freed(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    d = dyno()
    kept = KeptOutput(tmp_path / "output", DynoOutput(d, AppLog(log)))
    kept.start()
    line = b"x" * 99 + b"\n"
    for _ in range(3000):  # 300 kB, as the sandbox would write it: to the descriptor
        os.write(kept.fileno(), line)
    deadline = time.monotonic() + 10
    while not (tmp_path / "offset").exists() and time.monotonic() < deadline:
        os.write(kept.fileno(), b"tick\n")
        time.sleep(0.1)
    assert int((tmp_path / "offset").read_text()) >= 300_000, "it records how far it read"
    # the offset is recorded first, then the blocks freed (a crash between the two
    # re-reads, never reads a hole): give the second step its moment
    while os.stat(tmp_path / "output").st_blocks * 512 >= 100_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    st = os.stat(tmp_path / "output")
    assert st.st_size >= 300_000 and st.st_blocks * 512 < 100_000, "what it read is freed"
    os.write(kept.fileno(), b"last words")  # no newline: flushed when the dyno ends
    kept.drain()
    DynoOutput.close(kept.sink)
    text = log.read_text()
    assert text.count("app[web.1]: " + "x" * 99) == 3000
    assert text.rstrip().endswith("app[web.1]: last words")
    assert bytes(d._buffer).startswith(line) and bytes(d._buffer).endswith(b"last words")


def test_a_new_follower_goes_on_from_the_recorded_offset(tmp_path: Path) -> None:
    (tmp_path / "output").write_bytes(b"read before\nnew line\n")
    log = tmp_path / "a.log"
    kept = KeptOutput(tmp_path / "output", DynoOutput(dyno(), AppLog(log)), offset=12)
    kept.start()
    kept.drain()
    assert "read before" not in log.read_text() and "app[web.1]: new line" in log.read_text()


def test_the_keepers_child_is_waited_for_not_mistaken_for_the_keeper() -> None:
    """A dyno published before its keeper forked bwrap got the keeper's pid (in the
    host's namespace for good): the router never saw it bound."""
    import subprocess
    import sys

    from selfhost.stages.bwrap import _below_keeper

    keeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, time; time.sleep(0.3); subprocess.run(['sleep', '5'])",
        ]
    )
    child = _below_keeper(keeper.pid)
    try:
        assert child != keeper.pid
        # found as soon as it is forked: the same pid once it has exec'd sleep
        deadline = time.monotonic() + 5
        while True:
            with open(f"/proc/{child}/comm") as f:
                comm = f.read().strip()
            if comm == "sleep" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert comm == "sleep"
    finally:
        if child != keeper.pid:
            os.kill(child, 9)
        keeper.kill()
        keeper.wait()
