"""The measuring kit of the benchmarks (``dev/``) and the tests: synthetic LVIS results, and
the shared runner, timing, statistics and records code."""
