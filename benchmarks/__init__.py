"""Benchmarks: ``python -m benchmarks.run`` (``make bench``). Not part of ``make test``."""
