"""The weighted, first-come first-served semaphore behind the decoding pixel budget."""

import threading
import time

import pytest

from mghash_tf.core.budget import Budget


def _taker(budget, units, order, name, timeout=10):
    def run():
        with budget.hold(units, timeout=timeout):
            order.append(name)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for_waiters(budget, count):
    deadline = time.monotonic() + 10
    while len(budget._queue) < count:  # the queue is the only observable sign of a waiter
        assert time.monotonic() < deadline, "the waiting threads never queued"
        time.sleep(0.005)


def test_waiters_are_served_in_arrival_order_even_when_a_later_one_fits():
    budget, order = Budget(10), []
    assert budget.acquire(8)
    big = _taker(budget, 5, order, "big")  # 8 + 5 > 10: waits
    _wait_for_waiters(budget, 1)
    small = _taker(budget, 2, order, "small")  # 8 + 2 fits, but "big" came first
    _wait_for_waiters(budget, 2)
    time.sleep(0.05)
    assert order == [] and budget.used == 8
    budget.release(8)
    big.join(10), small.join(10)
    assert order == ["big", "small"] and budget.used == 0


def test_units_held_together_never_exceed_the_capacity():
    budget, peak, lock = Budget(10), [0], threading.Lock()

    def work(units):
        with budget.hold(units):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.002)

    threads = [threading.Thread(target=work, args=(u,)) for u in [3, 7, 4, 10, 1, 6, 2, 9] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert 0 < peak[0] <= 10 and budget.used == 0


def test_a_timed_out_waiter_leaves_the_queue_and_takes_nothing():
    budget = Budget(4)
    with budget.hold(3):
        assert budget.acquire(2, timeout=0.05) is False
        with pytest.raises(TimeoutError, match="2 of 4 units"):
            with budget.hold(2, timeout=0.05):
                pass
        assert budget.used == 3 and len(budget._queue) == 0
        assert budget.acquire(1, timeout=0)  # fits: the timed-out waiters block nobody
        budget.release(1)
    assert budget.used == 0


@pytest.mark.parametrize("units", [11, -1, 2.5, True, "3"])
def test_bad_requests_are_refused(units):
    with pytest.raises(ValueError, match=r"`units` must be an int in 0..10"):
        Budget(10).acquire(units)


def test_bad_capacity_and_over_release():
    for capacity in (0, -5, 1.5, None, False):
        with pytest.raises(ValueError, match="`capacity` must be an int >= 1"):
            Budget(capacity)
    budget = Budget(5)
    budget.acquire(2)
    with pytest.raises(ValueError, match="released 3 units but only 2 are held"):
        budget.release(3)
