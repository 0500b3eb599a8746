"""Package version (kept in one place for the User-Agent)."""

__version__ = "0.1.0"
