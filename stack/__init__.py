"""Cross-component plumbing: typed settings and logging. Nothing model-specific lives here."""
