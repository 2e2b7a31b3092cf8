"""`emoengine.benchmarks`: measurements, run as commands or modules. bench.py and measure.py (`emoengine
bench`: every backend x batch, one timing loop, parity with one comparator), gpu_bench.py (the same rows over a
GPU plan), end_to_end.py, ort_tuning.py, int8_frontier.py, long_stream.py,
pipeline_capacity.py, box_quality.py, serve_load.py; their results under results/. shared_data.py finds
../shared (golden data, demo clip) for them.
"""
