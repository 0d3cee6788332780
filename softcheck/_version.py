"""The package version, in one place (hatch reads it; reports record it)."""

__version__ = "0.1.0"
