"""drkit: dynamic representations of facial actions from a still image."""

__version__ = "0.3.0"
