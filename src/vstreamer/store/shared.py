"""Change counters that the gateway's worker processes share, so that each one's session cache stays true.

Each worker keeps live sessions in memory (:mod:`vstreamer.store.cache`), which is only right while it is the one
writer of what it caches. With ``--workers N`` a session's requests reach any worker. So every worker counts, in
memory all of them map (made before they fork), the changes it commits per session and per viewer; a cached copy
remembers the others' counts when it was read, and a hit whose counts moved since is read again from the database.

Keys hash into a fixed table of slots: two keys that share one only cost an extra read now and then. Each worker
writes its own row of the table alone (no locks): a count goes up after the change is committed, before the reply
that made it ends, so a request the client sends after that reply sees it.
"""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Hashable


class SharedVersions:
    """A table of ``workers`` rows of ``slots`` change counters in shared memory. Made once, before the workers fork;
    each worker takes its view with :meth:`view`."""

    def __init__(
        self, workers: int, slots: int = 1 << 16, *, _memory: mmap.mmap | None = None, worker: int = -1
    ):
        if workers < 1 or slots < 1:
            raise ValueError("workers and slots must be positive")
        self.workers, self.slots = workers, slots
        # Anonymous and shared: the forked workers (and the views of one process, in tests) see one table.
        self._memory = _memory if _memory is not None else mmap.mmap(-1, workers * slots * 8)
        self._counts = memoryview(self._memory).cast("Q")
        self.worker = worker
        """This view's row (-1: none: it counts nothing and sees every row)."""

    def view(self, worker: int) -> SharedVersions:
        """Worker ``worker``'s view of the same table."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} is not one of {self.workers}")
        return SharedVersions(self.workers, self.slots, _memory=self._memory, worker=worker)

    def _slot(self, key: Hashable) -> int:
        return zlib.crc32(repr(key).encode("utf-8", "surrogatepass")) % self.slots

    def bump(self, key: Hashable) -> None:
        """Note a committed change of ``key`` (a session id, or a viewer) by this worker."""
        if self.worker >= 0:
            self._counts[self.worker * self.slots + self._slot(key)] += 1

    def stamp(self, key: Hashable) -> int:
        """The other workers' changes of ``key`` (and of keys that share its slot) so far: it only grows."""
        slot, counts, total = self._slot(key), self._counts, 0
        for row in range(self.workers):
            if row != self.worker:
                total += counts[row * self.slots + slot]
        return total
