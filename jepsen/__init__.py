"""Coda's Jepsen-style fault-injection suite (issue #7)."""
