"""Fixtures of the fuzz tests: the collector process of :mod:`fuzz_support`."""

from __future__ import annotations

from fuzz_support import fuzz_collector

__all__ = ["fuzz_collector"]
