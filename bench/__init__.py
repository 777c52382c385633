"""gan-bench: load generation and side-by-side performance comparison (perf_analyzer-style)."""
