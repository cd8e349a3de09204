"""Training: dataset -> check -> split -> fit -> evaluate -> gate -> save -> log -> deploy."""
