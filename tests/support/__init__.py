"""Test and chaos scaffolding (tiny random models, fault injection, a local Ray cluster); used by
tests/ and benchmarks/, not installed with the package."""
