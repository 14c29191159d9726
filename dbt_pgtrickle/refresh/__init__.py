"""Refresh engine."""

from .engine import DIFFERENTIAL, FULL, NO_DATA, RefreshResult, refresh

__all__ = ["DIFFERENTIAL", "FULL", "NO_DATA", "RefreshResult", "refresh"]
