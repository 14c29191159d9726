"""Differential view maintenance: compile a defining query into full and delta SQL."""

from .compiler import DeltaPlan, compile_query

__all__ = ["DeltaPlan", "compile_query"]
