"""Timing helper shared by the benchmarks."""
import time

import numpy as np


def best_time(fn, repeats: int) -> float:
    """Minimum wall time (s) of ``repeats`` calls of ``fn`` after one warm-up call (tracing, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))
