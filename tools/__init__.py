"""Command-line tools; ``tools.compare`` and ``tools.analysis`` import as modules from the
repository root (``python -m tools.analysis``)."""
