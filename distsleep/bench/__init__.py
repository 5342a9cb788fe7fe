"""Benchmarks as a library: `jobs/benchmark.py` is their command line, tests import them like any module.

    engine.py      one worker's training step without Ray or MLflow (runs on a bare GPU box): the trainer's
                   DeepSpeed step, a plain PyTorch loop, the loader alone, and the GPU check plan
    train.py       the Ray Train + DeepSpeed path (`run_training`) against that plain loop, 1 vs N workers
    preprocess.py  our preprocessing path against the naive MNE route and reading the bytes; Ray 1 vs 2 workers
    realism.py     YASA's pretrained stager on a synthetic cohort against its ground truth (the realism bar)
    storage.py     the training stream's batches/s with its shards on local disk against a bucket (s3://)
    inference.py   windows scored on the CPU by the PyTorch model against its exported TorchScript and ONNX files
    load.py        how busy the machine is while a benchmark runs

Each subcommand module has `add_arguments(parser)` and `run(args) -> exit status`.
"""
