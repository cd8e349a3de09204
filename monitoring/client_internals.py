"""prometheus-client internals monitoring/metrics.py relies on, each behind one function.

tests/monitoring/test_client_internals.py fails when the pinned prometheus-client changes them.

- `bulk_observe`: add a whole batch's bucket counts and sum to a histogram child at once
  (prometheus-client has no bulk observe; one observe() per row costs ~1 us each on
  /predict/batch). Uses `Histogram._upper_bounds`, `._buckets`, `._sum`.
- `multiprocess_storage`: whether values live in PROMETHEUS_MULTIPROC_DIR files, which
  prometheus-client decides once, at import (`values.ValueClass._multiprocess`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import values


def bulk_observe(histogram: Any, scores: np.ndarray) -> None:
    """What `histogram.observe(s)` for every s in `scores` does, in one pass per bucket."""
    bounds = histogram._upper_bounds
    bucket_index = np.searchsorted(bounds, scores, side="left")
    for i, count in enumerate(np.bincount(bucket_index, minlength=len(bounds))):
        if count:
            histogram._buckets[i].inc(int(count))
    histogram._sum.inc(float(scores.sum()))


def multiprocess_storage() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))
