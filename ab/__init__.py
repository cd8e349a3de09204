"""A/B testing: hash assignment (assign.py), experiment config (config.py), exposure log
(exposures.py) and the analysis behind `python -m ab` (analysis.py, stats.py, report.py)."""
