"""Per-night evaluation: how well a stager scores each night, and the sleep statistics it gets right.

Sleep researchers judge a stager per night (one kappa per person-night, not one pooled figure) and by the
clinical numbers derived from its hypnogram (TST, sleep efficiency, WASO, latencies, stage percentages).
The sleep statistics are YASA's (`Hypnogram.sleep_statistics`, AASM definitions), not written again here.

Choices (said once, here):
* Epochs the scorer left unscored (-1) are unscored in the predicted hypnogram too, so true and predicted
  statistics describe the same epochs (the model outputs a stage for every epoch).
* REM latency is AASM's, minutes from sleep onset to the first REM epoch: YASA's `Lat_REM` counts from the
  start of the hypnogram, so it is `Lat_REM - SOL` (as YASA's documentation gives it).
* Confidence intervals are percentile bootstraps that resample SUBJECTS (all nights of a drawn subject come
  along), because nights of one person are not independent; the seed is fixed so reruns give the same CI.
  A configuration trained with several seeds also has its seeds resampled (`mean_over_nights_and_seeds`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distsleep.atomic import atomic_path, write_json_atomic, write_text_atomic
from distsleep.metrics import confusion, confusion_metrics, staging_metrics
from distsleep.stages import EPOCH_SECONDS, NUM_STAGES, STAGE_NAMES, UNSCORED

REM_LATENCY = "Lat_REM - SOL"  # not a YASA key: derived in `sleep_statistics`
# Our column name -> (YASA sleep_statistics key, unit).
SLEEP_STATISTICS: dict[str, tuple[str, str]] = {
    "tst_min": ("TST", "min"),
    "se_pct": ("SE", "%"),
    "waso_min": ("WASO", "min"),
    "sol_min": ("SOL", "min"),
    "rem_latency_min": (REM_LATENCY, "min"),
    "pct_n1": ("%N1", "%"),
    "pct_n2": ("%N2", "%"),
    "pct_n3": ("%N3", "%"),
    "pct_rem": ("%REM", "%"),
}
PER_NIGHT_METRICS = ("accuracy", "kappa", "macro_f1")
BLAND_ALTMAN = (("tst_min", "TST", "min"), ("waso_min", "WASO", "min"), ("se_pct", "sleep efficiency", "%"))
CSV_COLUMNS = (("record", "subject", "epochs") + PER_NIGHT_METRICS + tuple(f"f1_{s}" for s in STAGE_NAMES)
               + tuple(f"{name}_{side}" for name in SLEEP_STATISTICS for side in ("true", "pred")))
# Our codes -> YASA's labels (Hypnogram.from_integers): unscored epochs are "Uns", outside sleep and TST.
_YASA_MAPPING = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "R", UNSCORED: "Uns"}


@dataclass(frozen=True)
class Night:
    """One scored night: stage codes per epoch (W, N1, N2, N3, REM = 0..4; -1 unscored) from the scorer and
    the model, same length."""

    record: str
    subject: str
    true: np.ndarray
    predicted: np.ndarray
    epoch_seconds: float = EPOCH_SECONDS

    def __post_init__(self):
        if len(self.true) != len(self.predicted):
            raise ValueError(f"{self.record}: {len(self.true)} true stages but {len(self.predicted)} predicted")


def sleep_statistics(stages: np.ndarray, epoch_seconds: float = EPOCH_SECONDS) -> dict[str, float]:
    """YASA's sleep statistics of one hypnogram, under our column names (NaN where undefined, e.g. no REM)."""
    import yasa

    hypnogram = yasa.Hypnogram.from_integers(np.asarray(stages, dtype=int), mapping=_YASA_MAPPING,
                                             freq=f"{epoch_seconds:g}s")
    stats = dict(hypnogram.sleep_statistics())
    stats[REM_LATENCY] = stats.get("Lat_REM", math.nan) - stats.get("SOL", math.nan)
    return {name: float(stats.get(key, math.nan)) for name, (key, _) in SLEEP_STATISTICS.items()}


def night_row(night: Night) -> dict:
    """One per_night.csv row: agreement metrics over the scored epochs and true vs predicted statistics."""
    true = np.asarray(night.true)
    predicted = np.where(true == UNSCORED, UNSCORED, np.asarray(night.predicted))
    metrics = staging_metrics(true, predicted) if (true >= 0).any() else None
    row: dict = {"record": night.record, "subject": night.subject, "epochs": int((true >= 0).sum())}
    for name in PER_NIGHT_METRICS:
        row[name] = metrics[name] if metrics else math.nan
    for stage in STAGE_NAMES:
        row[f"f1_{stage}"] = metrics["f1"][stage] if metrics else math.nan
    for side, stages in (("true", true), ("pred", predicted)):
        for name, value in sleep_statistics(stages, night.epoch_seconds).items():
            row[f"{name}_{side}"] = value
    return row


def _confusion(night: Night) -> np.ndarray:
    true, predicted = np.asarray(night.true), np.asarray(night.predicted)
    scored = true >= 0
    return confusion(true[scored], predicted[scored], NUM_STAGES)


def mean_over_nights(values: Mapping[str, tuple[str, float]], n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict | None:
    """Mean of a per-night value (record -> (subject, value)) and the subject-bootstrap CI of that mean; None
    without a finite value."""
    records = sorted(r for r, (_, v) in values.items() if math.isfinite(v))
    if not records:
        return None
    data = np.asarray([values[r][1] for r in records], dtype=float)
    index, weights = _subject_weights([values[r][0] for r in records], n_boot, seed)
    return {"mean": float(data.mean()), "ci_mean": _bootstrap_mean(data, index, weights, level), "nights": len(records)}


def _subject_weights(subjects: Sequence[str], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(index of each night's subject, (n_boot, n_subjects) how often each subject is drawn per resample)."""
    names = {name: i for i, name in enumerate(sorted(set(subjects)))}
    index = np.asarray([names[s] for s in subjects])
    return index, _draw_counts(len(names), n_boot, np.random.default_rng(seed))


def _draw_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) how often each of n units (subjects, seeds) is drawn when n are drawn with replacement."""
    draws = rng.integers(0, n, size=(n_boot, n))
    return np.stack([np.bincount(row, minlength=n) for row in draws]).astype(float)


def _interval(samples: np.ndarray, level: float) -> list[float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return [math.nan, math.nan]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def _bootstrap_mean(values: np.ndarray, index: np.ndarray, weights: np.ndarray, level: float) -> list[float]:
    """CI of the mean over nights when subjects are resampled (each drawn subject brings all its nights); nights
    without a finite value are left out."""
    ok = np.isfinite(values)
    return _interval(_two_stage_means(values[ok][None, :], index[ok], weights), level)


def _describe(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "q25": None, "q75": None}
    q25, median, q75 = np.percentile(finite, [25, 50, 75])
    return {"n": int(finite.size), "mean": float(finite.mean()),
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "median": float(median), "q25": float(q25), "q75": float(q75)}


def summarize(nights: Sequence[Night], rows: Sequence[dict], n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> dict:
    """summary.json: pooled metrics (with subject-bootstrap CIs), per-night median/IQR/mean with the CI of
    the mean, and per sleep statistic the true/predicted distributions, bias and limits of agreement."""
    if not nights:
        raise ValueError("no nights to summarise")
    subjects = [night.subject for night in nights]
    index, weights = _subject_weights(subjects, n_boot, seed)
    confusions = np.stack([_confusion(night) for night in nights])
    true = np.concatenate([np.asarray(n.true) for n in nights])
    predicted = np.concatenate([np.asarray(n.predicted) for n in nights])
    pooled = staging_metrics(true, predicted)
    per_subject = np.stack([confusions[index == i].sum(axis=0) for i in range(weights.shape[1])])
    resampled = confusion_metrics(np.einsum("bs,sij->bij", weights, per_subject))
    pooled["ci"] = {name: _interval(resampled[name], level) for name in PER_NIGHT_METRICS}

    per_night = {}
    for name in PER_NIGHT_METRICS + tuple(f"f1_{s}" for s in STAGE_NAMES):
        values = np.asarray([row[name] for row in rows], dtype=float)
        per_night[name] = {**_describe(values), "ci_mean": _bootstrap_mean(values, index, weights, level)}
    statistics = {}
    for name, (_, unit) in SLEEP_STATISTICS.items():
        t = np.asarray([row[f"{name}_true"] for row in rows], dtype=float)
        p = np.asarray([row[f"{name}_pred"] for row in rows], dtype=float)
        difference = _describe(p - t)
        sd = difference["sd"] or 0.0
        limits = [difference["mean"] - 1.96 * sd, difference["mean"] + 1.96 * sd] if difference["n"] else [None, None]
        statistics[name] = {"unit": unit, "true": _describe(t), "predicted": _describe(p),
                            "difference": {**difference, "ci_mean": _bootstrap_mean(p - t, index, weights, level),
                                           "limits_of_agreement": limits}}
    return {
        "nights": len(nights),
        "subjects": int(weights.shape[1]),
        "epochs": int(pooled["n_epochs"]),
        "pooled": pooled,
        "per_night": per_night,
        "sleep_statistics": statistics,
        "bootstrap": {"unit": "subject", "resamples": n_boot, "seed": seed, "level": level,
                      "method": "percentile"},
    }


def evaluate_nights(nights: Sequence[Night], n_boot: int = 2000, seed: int = 0, level: float = 0.95
                    ) -> tuple[list[dict], dict]:
    """(per-night rows, summary) for a set of nights."""
    rows = [night_row(night) for night in nights]
    return rows, summarize(nights, rows, n_boot, seed, level)


def paired_difference(a: Mapping[str, tuple[str, float]], b: Mapping[str, tuple[str, float]], n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> dict | None:
    """Two models on the same test nights: the mean over nights of a − b and its subject-bootstrap CI.

    `a` and `b` map each record to (subject, per-night value). Pairing removes what the nights share (a hard
    night is hard for both models), so the CI of the difference is much narrower than the two CIs side by side
    suggest. None unless both hold the same nights of the same subjects, with at least two finite differences:
    models judged on different nights are not paired.
    """
    if a.keys() != b.keys() or any(a[r][0] != b[r][0] for r in a):
        return None
    records = sorted(r for r in a if math.isfinite(a[r][1]) and math.isfinite(b[r][1]))
    if len(records) < 2:
        return None
    difference = np.asarray([a[r][1] - b[r][1] for r in records], dtype=float)
    index, weights = _subject_weights([a[r][0] for r in records], n_boot, seed)
    return {"mean": float(difference.mean()), "ci_mean": _bootstrap_mean(difference, index, weights, level),
            "nights": len(records), "subjects": int(weights.shape[1])}


def _seed_nights(per_seed: Sequence[Mapping[str, tuple[str, float]]]) -> tuple[list[str], np.ndarray] | None:
    """(the subject of each night, (seeds, nights) values) over the nights every seed scored with a finite
    value; None when the seeds were not tested on the same nights of the same subjects."""
    first = per_seed[0]
    if any(m.keys() != first.keys() or any(m[r][0] != first[r][0] for r in m) for m in per_seed):
        return None
    records = sorted(r for r in first if all(math.isfinite(m[r][1]) for m in per_seed))
    values = np.asarray([[m[r][1] for r in records] for m in per_seed], dtype=float).reshape(len(per_seed), -1)
    return [first[r][0] for r in records], values


def _two_stage_means(nights: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per resample, the mean over the drawn subjects' nights (`weights`: how often each subject is drawn) of
    `nights`: (n_boot, n_nights), each night's value under that resample's drawn seeds, or (1, n_nights) for
    values that do not change between resamples."""
    members = np.zeros((nights.shape[1], weights.shape[1]))
    members[np.arange(nights.shape[1]), index] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * (nights @ members)).sum(axis=1) / (weights @ members.sum(axis=0))


def _seed_averaged(values: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(n_boot, n_nights): each night's value averaged over each resample's drawn seeds."""
    return (draws @ values) / draws.sum(axis=1, keepdims=True)


def mean_over_nights_and_seeds(per_seed: Sequence[Mapping[str, tuple[str, float]]], n_boot: int = 2000,
                               seed: int = 0, level: float = 0.95) -> dict | None:
    """One configuration trained with several seeds, each model tested on the same nights (`per_seed`: per seed,
    record -> (subject, value)): each night's value averaged over the seeds, its mean over the nights, and the
    CI of that mean from a two-stage bootstrap that draws the subjects and, independently, the seeds ("seeds":
    how many).

    The CI then answers for the configuration, not for these few trained models: it widens with the spread
    between seeds, which a CI over people alone leaves out. Drawing people and seeds independently is the usual
    approximation for two crossed factors (a little wide where a night's noise differs between seeds); with 3
    seeds the seed draws are coarse (10 distinct multisets) and, as any bootstrap of 3 values, rather too narrow
    in their part. With one seed it is `mean_over_nights`, exactly. None without a shared finite night."""
    if len(per_seed) == 1:
        return mean_over_nights(per_seed[0], n_boot, seed, level)
    found = _seed_nights(per_seed)
    if found is None or not found[0]:
        return None
    subjects, values = found
    index, weights = _subject_weights(subjects, n_boot, seed)
    draws = _draw_counts(len(per_seed), n_boot, np.random.default_rng([seed, 1]))
    means = _two_stage_means(_seed_averaged(values, draws), index, weights)
    return {"mean": float(values.mean(axis=0).mean()), "ci_mean": _interval(means, level), "nights": len(subjects),
            "seeds": len(per_seed)}


def paired_difference_over_seeds(a: Sequence[Mapping[str, tuple[str, float]]],
                                 b: Sequence[Mapping[str, tuple[str, float]]], n_boot: int = 2000, seed: int = 0,
                                 level: float = 0.95) -> dict | None:
    """`paired_difference` of two configurations each trained with one or more seeds (per seed, record ->
    (subject, value)): the mean over nights of (a's seed-averaged value − b's), its CI from resamples that draw
    the subjects once for both (paired) and each side's seeds independently ("seeds": how many on each side).
    One seed each: `paired_difference`, exactly. None unless every model was tested on the same nights of the
    same subjects, with at least two nights finite everywhere."""
    if len(a) == len(b) == 1:
        return paired_difference(a[0], b[0], n_boot, seed, level)
    both = _seed_nights([*a, *b])
    if both is None or len(both[0]) < 2:
        return None
    subjects, values = both
    index, weights = _subject_weights(subjects, n_boot, seed)
    side_a, side_b = values[:len(a)], values[len(a):]
    nights = (_seed_averaged(side_a, _draw_counts(len(a), n_boot, np.random.default_rng([seed, 1])))
              - _seed_averaged(side_b, _draw_counts(len(b), n_boot, np.random.default_rng([seed, 2]))))
    difference = side_a.mean(axis=0) - side_b.mean(axis=0)
    return {"mean": float(difference.mean()), "ci_mean": _interval(_two_stage_means(nights, index, weights), level),
            "nights": len(subjects), "subjects": int(weights.shape[1]), "seeds": [len(a), len(b)]}


def per_night_values(csv_text: str, metric: str = "kappa") -> dict[str, tuple[str, float]]:
    """record -> (subject, value of `metric`) from a per_night.csv (empty cells: NaN)."""
    rows = csv.DictReader(io.StringIO(csv_text))
    return {row["record"]: (row["subject"], float(row[metric]) if row[metric] else math.nan) for row in rows}


def _jsonable(value):
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def per_night_csv_text(rows: Sequence[dict]) -> str:
    """CSV text of the rows, columns CSV_COLUMNS (and, for pooled cross-validation folds, the `fold` that scored
    each night, after the subject); undefined values (NaN) are empty cells."""
    columns = CSV_COLUMNS
    if any("fold" in row for row in rows):
        columns = columns[:2] + ("fold",) + columns[2:]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and not math.isfinite(v) else
                         (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in columns})
    return buffer.getvalue()


def write_evaluation(out: str | Path, nights: Sequence[Night], rows: Sequence[dict], summary: dict) -> dict[str, Path]:
    """per_night.csv, summary.json and the plots under `out`, each written atomically. Returns the paths."""
    from distsleep.plots import bland_altman_png, confusion_png, kappa_distribution_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"per_night": out / "per_night.csv", "summary": out / "summary.json"}
    write_text_atomic(paths["per_night"], per_night_csv_text(rows))
    write_json_atomic(paths["summary"], _jsonable(summary))
    paths["kappa_plot"] = kappa_distribution_png([row["kappa"] for row in rows], out / "per_night_kappa.png",
                                                 title=f"per-night Cohen's kappa, {len(rows)} nights")
    for name, title, unit in BLAND_ALTMAN:
        paths[f"bland_altman_{name}"] = bland_altman_png(
            [row[f"{name}_true"] for row in rows], [row[f"{name}_pred"] for row in rows],
            out / f"bland_altman_{name}.png", title, unit)
    paths["confusion_plot"] = out / "confusion_pooled.png"
    with atomic_path(paths["confusion_plot"]) as tmp:
        confusion_png(summary["pooled"]["confusion"], tmp,
                      title=f"pooled confusion, {summary['nights']} nights (rows: true)")
    return paths
