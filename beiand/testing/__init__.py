"""Traffic builders shared by the tests, the benchmarks and the demo (never used on the hot path)."""
