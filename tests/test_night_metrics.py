"""Per-night evaluation on generated nights: one row per night, sleep statistics equal to YASA's on the same
hypnograms, subject-bootstrap CIs that narrow as nights are added, and the files a person looks at."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yasa
from sklearn.metrics import accuracy_score, cohen_kappa_score

from distsleep.night_metrics import (CSV_COLUMNS, SLEEP_STATISTICS, Night, evaluate_nights, mean_over_nights,
                                     mean_over_nights_and_seeds, night_row, paired_difference,
                                     paired_difference_over_seeds, per_night_values, write_evaluation)

YASA_LABELS = np.array(["WAKE", "N1", "N2", "N3", "REM"])


def _nights(n_subjects: int, nights_per_subject: int = 2, seed: int = 0, minutes: float = 240) -> list[Night]:
    """Simulated hypnograms; each subject's 'model' errs at its own rate (5-40 % of epochs replaced)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_subjects):
        error_rate = rng.uniform(0.05, 0.4)
        for k in range(nights_per_subject):
            true = yasa.simulate_hypnogram(tib=minutes, seed=int(rng.integers(1 << 30))).as_int().to_numpy()
            true = true.astype(np.int8)
            true[rng.random(true.size) < 0.02] = -1  # a few unscored epochs
            predicted = true.copy()
            wrong = rng.random(true.size) < error_rate
            predicted[wrong] = rng.integers(0, 5, wrong.sum())
            predicted[true == -1] = rng.integers(0, 5, (true == -1).sum())  # the model stages every epoch
            out.append(Night(f"s{s:03d}-night{k}", f"s{s:03d}", true, predicted))
    return out


def _yasa_stats(stages: np.ndarray) -> dict:
    """YASA's own statistics from its string labels (UNS for unscored), independently of our mapping."""
    labels = np.where(stages < 0, "UNS", YASA_LABELS[np.clip(stages, 0, 4)])
    stats = yasa.Hypnogram(list(labels), n_stages=5).sleep_statistics()
    return {**stats, "Lat_REM - SOL": stats["Lat_REM"] - stats["SOL"]}  # AASM's REM latency, per YASA's docs


def test_one_row_per_night_with_yasa_sleep_statistics():
    nights = _nights(3)
    rows, summary = evaluate_nights(nights, n_boot=200)
    assert [r["record"] for r in rows] == [n.record for n in nights] and summary["nights"] == len(nights) == 6
    for night, row in zip(nights, rows):
        scored = night.true >= 0
        assert row["subject"] == night.subject and row["epochs"] == int(scored.sum())
        assert row["accuracy"] == pytest.approx(accuracy_score(night.true[scored], night.predicted[scored]))
        assert row["kappa"] == pytest.approx(cohen_kappa_score(night.true[scored], night.predicted[scored]))
        # The scorer's unscored epochs stay unscored in the predicted hypnogram (same epochs compared).
        for side, stages in (("true", night.true), ("pred", np.where(scored, night.predicted, -1))):
            expected = _yasa_stats(stages)
            for name, (key, _) in SLEEP_STATISTICS.items():
                assert row[f"{name}_{side}"] == pytest.approx(expected[key], nan_ok=True), (name, side)
    assert rows[0]["tst_min_true"] != rows[0]["tst_min_pred"] or rows[0]["waso_min_true"] != rows[0]["waso_min_pred"]


def test_night_without_rem_has_undefined_rem_latency():
    true = np.array([0] * 10 + [2] * 50 + [0] * 5, dtype=np.int8)
    row = night_row(Night("r", "s", true, true.copy()))
    assert np.isnan(row["rem_latency_min_true"]) and row["tst_min_true"] == 25.0 and row["kappa"] == 1.0
    # AASM's REM latency counts from sleep onset: 10 min of wake, then 20 min of N2 before the first REM epoch.
    with_rem = np.array([0] * 20 + [2] * 40 + [4] * 10 + [0] * 5, dtype=np.int8)
    row = night_row(Night("r", "s", with_rem, with_rem.copy()))
    assert (row["sol_min_true"], row["rem_latency_min_true"]) == (10.0, 20.0)
    with pytest.raises(ValueError, match="predicted"):
        Night("r", "s", true, true[:-1])


def test_a_stage_absent_from_a_night_has_no_f1_and_does_not_lower_macro_f1():
    # A perfectly scored night without N3 (hundreds of SHHS nights have none): every figure is perfect.
    true = np.array([0] * 10 + [1] * 5 + [2] * 50 + [4] * 20 + [-1] * 3, dtype=np.int8)
    row = night_row(Night("r", "s", true, np.where(true < 0, 2, true)))
    assert (row["accuracy"], row["kappa"], row["macro_f1"]) == (1.0, 1.0, 1.0)
    assert np.isnan(row["f1_N3"]) and row["f1_N1"] == 1.0
    # Predicting a stage the night lacks is an error of that stage: F1 0, counted in the mean.
    predicted = true.copy()
    predicted[:2] = 3
    wrong = night_row(Night("r", "s", true, predicted))
    assert wrong["f1_N3"] == 0.0 and wrong["macro_f1"] == pytest.approx(np.mean([16 / 18, 1, 1, 0, 1]))
    # The bootstrap's confusion-matrix metrics agree with the per-night ones.
    _, summary = evaluate_nights([Night("r", "s", true, predicted)], n_boot=20)
    assert summary["pooled"]["macro_f1"] == pytest.approx(wrong["macro_f1"])
    assert summary["pooled"]["ci"]["macro_f1"] == pytest.approx([wrong["macro_f1"]] * 2)


def test_bootstrap_ci_narrows_as_nights_are_added():
    nights = _nights(48, 1, seed=1, minutes=120)
    few, many = (evaluate_nights(nights[:n], n_boot=500)[1] for n in (6, 48))

    def width(interval):
        return interval[1] - interval[0]

    for name in ("kappa", "accuracy"):
        assert width(many["per_night"][name]["ci_mean"]) < 0.75 * width(few["per_night"][name]["ci_mean"])
        assert width(many["pooled"]["ci"][name]) < 0.75 * width(few["pooled"]["ci"][name])
        low, high = many["pooled"]["ci"][name]
        assert low <= many["pooled"][name] <= high
    assert width(many["sleep_statistics"]["tst_min"]["difference"]["ci_mean"]) < \
        width(few["sleep_statistics"]["tst_min"]["difference"]["ci_mean"])
    # Fixed seed: the same nights give the same intervals.
    again = evaluate_nights(nights[:6], n_boot=500)[1]
    assert again["per_night"]["kappa"]["ci_mean"] == few["per_night"]["kappa"]["ci_mean"]
    assert few["bootstrap"]["unit"] == "subject" and few["subjects"] == 6


def test_files_are_written(tmp_path):
    nights = _nights(4)
    rows, summary = evaluate_nights(nights, n_boot=100)
    paths = write_evaluation(tmp_path / "eval", nights, rows, summary)
    with open(paths["per_night"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(nights) and tuple(table[0]) == CSV_COLUMNS
    assert float(table[0]["kappa"]) == pytest.approx(rows[0]["kappa"], rel=1e-5)
    written = json.loads(paths["summary"].read_text())
    assert written["nights"] == 8 and written["pooled"]["confusion"] == summary["pooled"]["confusion"]
    for key in ("kappa_plot", "bland_altman_tst_min", "bland_altman_waso_min", "bland_altman_se_pct", "confusion_plot"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    assert sorted(p.name for p in (tmp_path / "eval").iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_paired_difference_sees_what_side_by_side_intervals_hide():
    rng = np.random.default_rng(3)
    subjects = [f"s{i:02d}" for i in range(20) for _ in range(2)]  # 20 people, 2 nights each
    hard = rng.uniform(0.45, 0.9, len(subjects))  # how well any model does on each night varies a lot
    a = {f"{s}-n{k}": (s, float(v)) for k, (s, v) in enumerate(zip(subjects, hard))}
    b = {r: (s, v - 0.03 + float(rng.normal(0, 0.01))) for r, (s, v) in a.items()}  # 0.03 worse on every night
    paired = paired_difference(a, b, n_boot=1000)
    assert paired["nights"] == 40 and paired["subjects"] == 20
    assert paired["mean"] == pytest.approx(np.mean([a[r][1] - b[r][1] for r in a]))
    low, high = paired["ci_mean"]
    assert 0 < low < paired["mean"] < high  # a real difference: the CI excludes 0
    # Each model's own CI (its difference to a model scoring 0 on every night) is several times wider: side by
    # side, the two intervals overlap and hide the difference the pairing shows.
    zero = {r: (s, 0.0) for r, (s, _) in a.items()}
    own_a, own_b = (paired_difference(x, zero, n_boot=1000)["ci_mean"] for x in (a, b))
    assert own_b[1] > own_a[0] and high - low < 0.25 * (own_a[1] - own_a[0])
    assert paired_difference(b, a, n_boot=1000)["mean"] == pytest.approx(-paired["mean"])
    assert paired_difference(a, dict(a))["ci_mean"] == [0.0, 0.0]
    # Not the same nights (or not the same people): not paired.
    assert paired_difference(a, {r: v for r, v in list(b.items())[1:]}) is None
    assert paired_difference(a, {r: ("someone else", v) for r, (_, v) in b.items()}) is None


def test_a_configurations_interval_widens_with_the_spread_between_its_seeds():
    rng = np.random.default_rng(4)
    subjects = [f"s{i:02d}" for i in range(20) for _ in range(2)]
    base = {f"{s}-n{k}": (s, float(v)) for k, (s, v) in enumerate(zip(subjects, rng.uniform(0.6, 0.9, 40)))}

    def seed_runs(offsets):
        return [{r: (s, v + off + float(rng.normal(0, 0.002))) for r, (s, v) in base.items()} for off in offsets]

    def averaged(runs):
        return {r: (s, float(np.mean([run[r][1] for run in runs]))) for r, (s, _) in base.items()}

    # One seed: the people-only interval, exactly.
    assert mean_over_nights_and_seeds([base]) == mean_over_nights(base)
    # Seeds that agree: about the people-only interval of their averaged nights.
    agree = seed_runs([0.0, 0.0, 0.0])
    people = mean_over_nights(averaged(agree))
    both = mean_over_nights_and_seeds(agree)
    assert both["mean"] == pytest.approx(people["mean"]) and both["seeds"] == 3 and both["nights"] == 40
    assert both["ci_mean"] == pytest.approx(people["ci_mean"], abs=0.002)
    # Seeds 0.04 apart: the same mean, and an interval that answers for the configuration, not three models.
    spread = seed_runs([-0.04, 0.0, 0.04])
    people = mean_over_nights(averaged(spread))
    both = mean_over_nights_and_seeds(spread)
    assert both["mean"] == pytest.approx(people["mean"])
    assert both["ci_mean"][0] < people["ci_mean"][0] and both["ci_mean"][1] > people["ci_mean"][1]
    assert (both["ci_mean"][1] - both["ci_mean"][0]) > 1.5 * (people["ci_mean"][1] - people["ci_mean"][0])

    # Paired: a configuration 0.01 better than a single model on every night. Over people alone its seed-averaged
    # nights differ clearly; with seeds 0.04 apart, three seeds cannot tell.
    other = {r: (s, v - 0.01) for r, (s, v) in base.items()}
    alone = paired_difference(averaged(spread), other)
    paired = paired_difference_over_seeds(spread, [other])
    assert paired["mean"] == pytest.approx(alone["mean"]) and paired["seeds"] == [3, 1]
    assert alone["ci_mean"][0] > 0 and paired["ci_mean"][0] < 0 < paired["ci_mean"][1]
    assert paired_difference_over_seeds([base], [other]) == paired_difference(base, other)
    # Not the same nights of the same people: nothing to pair or pool.
    assert paired_difference_over_seeds(spread, [{r: v for r, v in list(other.items())[1:]}]) is None
    assert mean_over_nights_and_seeds([base, {r: ("someone else", v) for r, (_, v) in base.items()}]) is None


def test_per_night_values_read_back_the_csv(tmp_path):
    nights = _nights(3)
    rows, summary = evaluate_nights(nights, n_boot=50)
    text = write_evaluation(tmp_path, nights, rows, summary)["per_night"].read_text()
    values = per_night_values(text)
    assert list(values) == [n.record for n in nights]
    assert all(values[r["record"]] == (r["subject"], pytest.approx(r["kappa"], rel=1e-5)) for r in rows)
