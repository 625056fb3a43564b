"""Fixtures of the security tests: the private pipeline of :mod:`secure_stack`."""

from __future__ import annotations

from secure_stack import cli_env, secure_stack

__all__ = ["cli_env", "secure_stack"]
