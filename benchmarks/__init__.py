"""Benchmarks: `python -m benchmarks.time_to_accuracy` (make bench) and its seed-recipe
contender; bench_train.py and bench_serving.py are run as scripts."""
