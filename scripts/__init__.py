"""Tools beside the method: benchmarks (bench.py, bench_minillm.py), the memory table, checkpoint conversion."""
