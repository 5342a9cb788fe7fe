"""Benchmarks as a library: `jobs/benchmark.py` is their command line, tests import them like any module.

`step` measures one worker's training step without Ray or MLflow (it runs on a bare GPU box); `train`
compares that step with the real Ray Train + DeepSpeed path.
"""
