"""A first-come, first-served counting budget shared by threads: a weighted semaphore.

Image decoding uses it to bound the pixels that all threads of a process hold at once
(:data:`mghash_tf.core.images.DECODE_BUDGET`): many small decodes run side by side, a large one
waits until it fits and then runs alone. Waiters are served in arrival order, so a stream of
small requests cannot starve a large one.
"""

from __future__ import annotations

import collections
import threading
from contextlib import contextmanager


class Budget:
    """``capacity`` units handed out to threads; :meth:`hold` waits until its share fits."""

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"`capacity` must be an int >= 1. Received: capacity={capacity!r}")
        self.capacity = capacity
        self._used = 0
        self._queue = collections.deque()
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    def acquire(self, units: int, timeout: float | None = None) -> bool:
        """Take ``units`` once every earlier waiter is served and they fit; False after
        ``timeout`` seconds (None: wait as long as it takes)."""
        if isinstance(units, bool) or not isinstance(units, int) or not 0 <= units <= self.capacity:
            raise ValueError(f"`units` must be an int in 0..{self.capacity} (the capacity). "
                             f"Received: units={units!r}")
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                granted = self._cond.wait_for(
                    lambda: self._queue[0] is ticket and self._used + units <= self.capacity, timeout)
                if granted:
                    self._used += units
                return granted
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now

    def release(self, units: int) -> None:
        with self._cond:
            if units > self._used:
                raise ValueError(f"released {units} units but only {self._used} are held")
            self._used -= units
            self._cond.notify_all()

    @contextmanager
    def hold(self, units: int, timeout: float | None = None):
        """``with budget.hold(n):`` ... ; TimeoutError when ``timeout`` passes first."""
        if not self.acquire(units, timeout):
            raise TimeoutError(f"waited {timeout} s for {units} of {self.capacity} units")
        try:
            yield
        finally:
            self.release(units)
