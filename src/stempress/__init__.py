"""stempress: measure, store and reduce 4D-STEM data."""

__version__ = "0.1.0"
