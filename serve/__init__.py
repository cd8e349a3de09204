"""Serving: one FastAPI app under gunicorn that loads the model and answers predictions."""
