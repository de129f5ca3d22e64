"""Embedded backends that need no server: ``memory://`` and ``sqlite:///path.db``."""
