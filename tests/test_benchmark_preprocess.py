"""`jobs/benchmark.py preprocess` (`distsleep.bench.preprocess`) on two short nights, so that the benchmark cannot rot.

Only the single-process routes run here (`--no-ray`): the session's `ray_local` cluster already holds
the one `ray.init` a pytest process may make, and the 1 vs 2 workers comparison needs clusters of its own.
"""

from __future__ import annotations

import argparse
import json

from distsleep.bench import preprocess as benchmark


def test_preprocess_benchmark_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "figures.json"
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    code = benchmark.run(parser.parse_args(["--hours", "0.5", "--n-records", "2", "--naive-records", "1",
                                            "--repeats", "1", "--workers", "1", "--no-ray", "--json", str(out)]))
    assert code == 0  # figures are reported, not asserted, without --check
    result = json.loads(out.read_text())

    assert result["n_records"] == 2 and result["naive_records"] == 1
    assert set(result["s_per_record"]) == {"bytes", "ours", "mne_include", "naive"}
    assert all(seconds > 0 for seconds in result["s_per_record"].values()), result["s_per_record"]
    assert all(seconds > 0 for seconds in result["profile_ours"].values()), result["profile_ours"]
    # Half an hour is 60 epochs; one int16 channel at 100 Hz is 6000 B of signal per epoch plus small overheads.
    assert result["epochs_per_record"] == 60
    assert 6000 < result["bytes_per_epoch"] <= benchmark.GOAL_BYTES_PER_EPOCH
    assert "ray" not in result and not result["extrapolation"]["efficiency_measured"]
    assert result["extrapolation"]["ours_minutes"] > 0 and result["extrapolation"]["naive_cpu_hours"] > 0
    assert [g["goal"].split()[0] for g in result["goals"]] == ["naive", "MNE", "ours", "bytes"]

    printed = capsys.readouterr().out
    assert "page cache warmed" in printed and "goals:" in printed and "extrapolation to 5,791 records" in printed
    assert "Ray scaling: not measured (--no-ray)" in printed


def test_preprocess_benchmark_routes_agree_on_the_epochs(tmp_path):
    """The baselines cut the same EEG into the same number of epochs as our shards hold."""
    from distsleep.config import PreprocessConfig
    from distsleep.shards.convert import convert_record
    from distsleep.shards.format import read_shard
    from distsleep.shards.pipeline import discover
    from distsleep.synth.cohort import CohortConfig, generate_cohort

    generate_cohort(tmp_path / "cohort", CohortConfig(n_records=1, hours=0.5, seed=3), progress=False)
    config = PreprocessConfig()
    (source,) = discover(config, tmp_path / "cohort")
    convert_record(source, config, tmp_path / "out")
    ours = read_shard(tmp_path / "out" / "shards" / f"{source.record_id}.tar").physical()[:, 0]
    naive = benchmark.naive_mne_route(source.signal_path)
    include = benchmark.mne_include_route(source.signal_path)
    assert ours.shape == naive.shape == include.shape == (60, 3000)
    def relative_error(other):
        return float(((ours - other) ** 2).mean()) / float((ours ** 2).mean())

    # MNE on the EEG alone + the same polyphase filter: the same samples up to int16 quantization.
    assert relative_error(include) < 1e-4
    # The naive route is the same signal, but MNE's 125 -> 250 Hz upsampling of the mixed-rate file delays it
    # by about 4 ms (~6 % relative error on a 9-h night, nearly all of it that lag) and its FFT resampling
    # differs near the band edge.
    assert relative_error(naive) < 0.1
