"""Benchmark scripts, each run as ``python -m benchmarks.<script>`` from the repository root; see benchmarks/README.md."""
