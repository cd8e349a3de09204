"""Monitoring: metric definitions (metrics.py), Prometheus rules and config, Grafana files.

Import `monitoring.metrics` where you record or serve metrics; this package import itself
stays free of prometheus_client so that PROMETHEUS_MULTIPROC_DIR can still be set first.
"""
