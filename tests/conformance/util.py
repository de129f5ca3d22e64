"""The conformance suite's helpers, for the adapter tests that import them from here."""

from mqkit.testing.util import ARRIVAL, QUIET, assert_quiet, collect, drain_concurrently

__all__ = ["ARRIVAL", "QUIET", "assert_quiet", "collect", "drain_concurrently"]
