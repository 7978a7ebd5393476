"""Per-call time buckets of plugin calls: counted in the worker, summed by the plugin health store.

Django-free: the worker imports it. A call's duration goes into one of
``len(BOUNDS_MS) + 1`` buckets (1-2-5 steps from 1 ms to 60 s, then
"longer"); a worker sends each (config, method)'s bucket counts with its
task result, so the main process learns the spread of call times without a
message per call. :func:`percentile` reads a percentile back from summed
counts, interpolating within the bucket it falls in.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

BOUNDS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000)
BUCKETS = len(BOUNDS_MS) + 1


def bucket(ms: float) -> int:
    """The bucket of a call that took ``ms`` milliseconds."""
    return bisect.bisect_left(BOUNDS_MS, ms)


def empty() -> list[int]:
    return [0] * BUCKETS


def percentile(counts: Sequence[int], fraction: float) -> float | None:
    """The ``fraction`` percentile (0.95 = p95) in ms, None when nothing was counted."""
    total = sum(counts)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BOUNDS_MS[index - 1] if index > 0 else 0.0
            high = BOUNDS_MS[index] if index < len(BOUNDS_MS) else BOUNDS_MS[-1]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return BOUNDS_MS[-1]
