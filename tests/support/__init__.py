"""Test-only code the unit tests and benchmarks share; not part of the shipped package."""
