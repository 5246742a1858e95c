"""phyjax.parallel.ordered_map: the items' order, the first call alone, errors, the workers'
setting.  (That the loops using it give their one-after-another results: the effects fit in
test_calibration_simulated, the site maps and the evaluation in test_pipeline.)"""

import threading
import time

import pytest

from phyjax.parallel import default_workers, ordered_map


def test_results_keep_the_items_order_whatever_finishes_first():
    # later items finish first: a pool that yielded in completion order would reverse them
    def slow_first(i):
        time.sleep(0.02 * (5 - i % 5))
        return i * i

    assert list(ordered_map(slow_first, range(12), workers=3)) == [i * i for i in range(12)]
    assert list(ordered_map(slow_first, [], workers=2)) == []


def test_first_item_runs_alone_then_calls_overlap():
    running, peak, lock = [0], [0], threading.Lock()
    seen_during_first = []

    def fn(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if i == 0:
                seen_during_first.append(running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return i

    assert list(ordered_map(fn, range(6), workers=2)) == list(range(6))
    assert seen_during_first == [1]      # nothing else ran with the first call
    assert peak[0] == 2                  # the rest overlapped, two at a time


def test_an_error_is_raised_at_its_item():
    def fn(i):
        if i == 3:
            raise KeyError("bad item 3")
        return i

    got = []
    with pytest.raises(KeyError, match="bad item 3"):
        for x in ordered_map(fn, range(6), workers=2):
            got.append(x)
    assert got == [0, 1, 2]


def test_workers_setting(monkeypatch):
    monkeypatch.setenv("PHYJAX_THREADS", "1")
    assert default_workers() == 1
    monkeypatch.setenv("PHYJAX_THREADS", "two")
    with pytest.raises(ValueError, match="PHYJAX_THREADS"):
        default_workers()
    monkeypatch.delenv("PHYJAX_THREADS")
    assert 1 <= default_workers() <= 2
    with pytest.raises(ValueError, match="workers=0"):
        list(ordered_map(abs, [1], workers=0))

