"""The harness version (one source: pyproject reads it from here)."""

__version__ = "0.1.0"
