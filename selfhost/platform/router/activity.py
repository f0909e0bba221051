"""What the router's workers know of each other's requests: per app and per dyno, when
one last came and how many are in flight.

The router runs one worker process per core (``selfhost.router_workers``), each with
its own listening socket on the same port (``SO_REUSEPORT``: the kernel spreads new
connections). A worker decides itself where each of its requests goes, but not from
what it alone sees: the dyno with the fewest requests in flight is the one with the
fewest in all workers, and an autostarted app has been idle long enough to scale web
back to 0 only if no worker is serving it. So every worker records its requests here,
per app and per dyno (:func:`dyno_key`), and reads every worker's record; ``invoke ps``
shows the same counts.

The record is anonymous shared memory, mapped by the router's parent before it forks
its workers (a worker started again later inherits the same mapping). Each worker
writes only its own row, so no lock is needed; readers take the latest time and the
sum of the counts. A key (an app's name, a dyno's :func:`dyno_key`) is hashed to one of
:data:`SLOTS` slots: two keys that share a slot only make an idle stop later, never
earlier, and a shown count higher.
"""

from __future__ import annotations

import mmap
import time
import zlib

SLOTS = 4096


def dyno_key(dyno_id: str) -> str:
    """A dyno's key in the record (never an app's name: those have no colon)."""
    return f"dyno:{dyno_id}"


class Activity:
    """Shared per-app request records of ``workers`` workers; this process writes the
    row of worker ``worker`` (:meth:`as_worker`)."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.workers = workers
        self.worker = 0
        # a row per worker: SLOTS doubles (last request), then SLOTS int64 (in flight)
        self._mem = mmap.mmap(-1, workers * SLOTS * 16)  # MAP_SHARED | MAP_ANONYMOUS
        view = memoryview(self._mem)
        half = workers * SLOTS * 8
        self._last = view[:half].cast("d")
        self._busy = view[half:].cast("q")

    def as_worker(self, worker: int) -> Activity:
        """This process is worker ``worker`` (after the fork that made it)."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} of {self.workers}")
        self.worker = worker
        return self

    @staticmethod
    def slot(app: str) -> int:
        return zlib.crc32(app.encode()) % SLOTS

    def begin(self, key: str) -> int:
        """A request for ``key`` (an app, or a dyno) came to this worker; returns its
        place for :meth:`end`."""
        return self.begin_slot(self.slot(key))

    def begin_slot(self, slot: int) -> int:
        """:meth:`begin` for a key's :meth:`slot`, computed once by the caller."""
        i = self.worker * SLOTS + slot
        self._last[i] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        self._busy[i] += 1
        return i

    def end(self, i: int) -> None:
        """The request :meth:`begin` counted has ended (answered, failed or cut off)."""
        self._last[i] = time.monotonic()
        self._busy[i] -= 1

    def last_request(self, app: str) -> float:
        """When any worker last began or ended a request for ``app`` (0: never)."""
        s = self.slot(app)
        return max(self._last[w * SLOTS + s] for w in range(self.workers))

    def in_flight(self, key: str) -> int:
        """Requests for ``key`` (an app, or a dyno) in flight in all workers."""
        return self.in_flight_slot(self.slot(key))

    def in_flight_slot(self, slot: int) -> int:
        busy = self._busy
        return sum(busy[w * SLOTS + slot] for w in range(self.workers))

    def forget_worker(self, worker: int) -> None:
        """A worker died: what it had in flight is not in flight any more."""
        for s in range(SLOTS):
            self._busy[worker * SLOTS + s] = 0
