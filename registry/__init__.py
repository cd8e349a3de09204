"""The model registry: the one owner of the model artifact.

`store.Registry` saves, lists, loads, promotes and rolls back versions in a folder;
`meta.ModelMeta` is meta.json, typed and validated; `models` is the model protocol (fit, score
one row, score a matrix, importance) with LightGBM and logistic regression behind it. Training
writes through this package; the server, monitoring, A/B and the audit read through it.
"""
