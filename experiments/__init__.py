"""The experiment log: experiments/runs.csv, one row per training run, and a reader for it."""
