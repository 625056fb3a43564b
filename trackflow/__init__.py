"""trackflow: a self-hosted event tracking pipeline for product analytics.

This package holds what every component shares: configuration, the app registry, the local stack,
the CLI and the error tree. The components live in the top-level packages ``collector``,
``pipeline``, ``sinks`` and ``schemas``.
"""

__version__ = "0.1.0"
