"""Order-keeping thread maps for the loops that run one jit-compiled network or numpy reduction
per scan (the site maps' harmonization, the scanner-effects fit, the evaluation).

On a CPU, XLA runs one small-batch inference over both cores only part of the time (a 2-D
U-Net on a batch of 8 slices), and numpy's sort / partition use one core; two calls in flight
at once fill the other (measured on 2 cores: 12 site-map scans harmonized in 38.2 s one after
another, 29.3 s two at a time, outputs identical to the last bit; docs/phycharm_ablation.md,
item 77).  Each call is the same computation either way, only its timing changes, so results
do not depend on the number of workers.  JAX's compiled functions and numpy release the GIL
while they run; the first item runs alone so that whatever a callable compiles or builds on
first use (a ``jax.jit`` cache entry, a harmonizer's lazily built ``predict``) is built once.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: The most calls :func:`ordered_map` keeps in flight by default: two fill a 2-core machine's
#: idle core (above); more would only add memory (every call holds a volume's slices), as XLA
#: already spreads each call over the cores it has.
MAX_WORKERS = 2


def default_workers() -> int:
    """``min(MAX_WORKERS, os.cpu_count())``, at least 1; ``$PHYJAX_THREADS`` (a whole number
    >= 1) overrides it (1: every call one after another)."""
    env = os.environ.get("PHYJAX_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"PHYJAX_THREADS={env!r}; expected a whole number >= 1.")
        return int(env)
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None
                ) -> Iterator[R]:
    """``fn(item)`` for every item, yielded in the items' order, with up to ``workers``
    (default :func:`default_workers`) calls running at once on threads; at most ``2 * workers``
    results are held before they are consumed.  The first item is run alone, before any other
    starts.  An exception in a call is raised when its result is reached, after the calls
    already submitted (at most ``2 * workers``) have finished.  Raises ValueError for
    ``workers`` < 1 or a bad ``$PHYJAX_THREADS``."""
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers={workers}; expected at least 1.")
    items = iter(items)
    for first in items:
        yield fn(first)
        break
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
