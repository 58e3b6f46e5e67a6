"""Benchmarks, each run as `python -m benchmarks.NAME` (see benchmarks/bench.mk):
time_to_accuracy (make bench) with its seed_recipe contender and the calibration of the
machine's ceiling, gpu (make bench-gpu), soak (make soak), bench_train, bench_serving
(make bench-serving) and recipe_probe; harness holds what the ones that run the trainer
share."""
