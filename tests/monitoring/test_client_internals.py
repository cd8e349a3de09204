"""Contract: the prometheus-client internals behind monitoring/client_internals.py still exist
and still mean what the adapter assumes."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, values

from monitoring.client_internals import bulk_observe, multiprocess_storage


def test_bulk_observe_equals_one_observe_per_score():
    registry = CollectorRegistry()
    buckets = (0.1, 0.5, 1.0)
    bulk = Histogram("bulk", "b", buckets=buckets, registry=registry)
    single = Histogram("single", "s", buckets=buckets, registry=registry)
    scores = np.array([0.0, 0.1, 0.1000001, 0.3, 0.5, 0.9, 1.0, 2.0])
    bulk_observe(bulk, scores)
    for s in scores:
        single.observe(float(s))

    def samples(name):
        return {(s.name.replace(name, ""), tuple(sorted(s.labels.items()))): s.value
                for metric in registry.collect() if metric.name == name for s in metric.samples
                if not s.name.endswith("_created")}

    a, b = samples("bulk"), samples("single")
    assert a.keys() == b.keys()
    for key in a:  # counts exactly; the sum up to the order numpy adds in
        assert a[key] == pytest.approx(b[key], rel=1e-12) if key[0] == "_sum" else a[key] == b[key], key


def test_the_internals_the_adapter_reads_exist():
    histogram = Histogram("probe", "p", buckets=(1.0,), registry=CollectorRegistry())
    assert list(histogram._upper_bounds) == [1.0, float("inf")]
    assert len(histogram._buckets) == 2 and hasattr(histogram._sum, "inc")
    assert hasattr(values.ValueClass, "_multiprocess") or not multiprocess_storage()
