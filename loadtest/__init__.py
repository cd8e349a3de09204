"""Load testing: a Locust scenario of real traffic, a headless runner, SLO verdicts and a report.

    python -m loadtest.payloads --out var/loadtest/payloads.json --rows 2000
    python -m loadtest --host http://127.0.0.1:8000 --users 64 --duration 30s

See loadtest/README.md for how to run it, read the report and state capacity.
"""
