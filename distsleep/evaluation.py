"""`distsleep evaluate`: a trained model on every night of a manifest's split, judged per night.

    result = run_evaluation(EvaluateConfig(model="models:/stager@best", shards="shards/manifest.json", out="eval"))

One Ray task per record (`distsleep.fanout`: a GPU task when the cluster has GPUs) reads the record's shard
through the training loader's evaluation pass, scores every window (stride 1 by default: each epoch's
probabilities averaged over every window holding it, as `predict` does) and returns the night's labels and
probabilities. The driver then writes, under `out`:

* `per_night.csv`, `summary.json` and the plots of `distsleep.night_metrics` (per-night kappa, Bland-Altman
  for TST/WASO/SE, pooled confusion), the summary extended with the model, the data, the channel roles read
  (and which were substituted) and the records that failed;
* `probabilities/<record>.npz`: labels, probabilities and predicted stage per epoch;

and logs an MLflow run (tag `distsleep.kind` = evaluation) naming the model's training run
(`distsleep.model_run`) and source, with the pooled metrics and the files as artifacts.

Cross-dataset: the bundle's channel roles are looked up among the manifest's; a role the shards lack is read
through the role filling the same model input (`bundle.map_roles`, e.g. SHHS C4-A1 -> Sleep-EDF Fpz-Cz), and
summary.json / the console say so. Shards must give the model the samples per epoch it was built for.
A failing record is listed in summary.json (`failed`, `complete: false`); the others are still evaluated.

Cross-validation: several models, each with its own manifest (`model` and `shards` paired by position: each
fold's model and its fold manifest, `distsleep folds`), are each scored on their own manifest's split and
their nights pooled into one evaluation, so every person of the cohort is judged once by the model that never
saw them. The manifests must hold the same preprocessed data (the same preprocessing config), no night may be
in two of them, and every model is checked against the people of its own manifest. `per_night.csv` then has
a `fold` column, and `summary.json` a `folds` list (model, manifest, records).

Seen people: a bundle records what it learned from (`bundle.trained_records`). Scoring a validation or test
split that holds a person it learned from (any night of theirs, e.g. a manifest split with another seed) is
refused: the figures would measure memorisation. So is scoring a test split that holds a person who chose the
model (its validation records and its sources', `bundle.selected_records`; e.g. a fold's model on another
fold's test people, who were its validation people). A bundle that does not say what it learned from is
evaluated, and summary.json says the check could not be made. The MLflow metrics are named after the split (`test_kappa`,
`val_kappa`, `train_kappa`), so only a test split's evaluation is ever read as a test result.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from distsleep.atomic import atomic_path
from distsleep.bundle import BundleError, Located, load_model, map_roles, people_overlap, resolve, trained_records
from distsleep.config import ConfigBase, default_tracking_uri
from distsleep.errors import InputError, first_line
from distsleep.fanout import run_each
from distsleep.metrics import staging_metrics
from distsleep.night_metrics import Night, evaluate_nights, write_evaluation
from distsleep.runtime import connect_ray
from distsleep.shards.loader import LoaderConfig, load_manifest, shard_checksums, shard_identities, shard_urls
from distsleep.shards.manifest import manifest_hash, split_records
from distsleep.tracking import (EVALUATED_SWEEP_TAG, KIND_TAG, MODEL_RUN_TAG, MODEL_SOURCE_TAG, RunLogger, check_reachable,
                                client, experiment_id)
from distsleep.train.evaluate import aggregate, score_windows

log = logging.getLogger("distsleep.evaluation")

PROBABILITIES = "probabilities"  # the folder of per-record .npz files under `out`
# Preprocessing settings that change what the model sees; a difference is reported, not refused.
COMPARED_SETTINGS = ("bandpass", "filter_recipe", "trim_wake_minutes")


class EvaluationError(InputError):
    """The evaluation cannot run (no records in the split, every record failed, ...)."""


@dataclass(frozen=True)
class EvaluateConfig(ConfigBase):
    # Any source bundle.resolve accepts (file, folder, run id, runs:/, models:/NAME/VERSION or @alias), each scored
    # on the manifest.json (or its folder / URL) at the same position of `shards`; several: a cross-validation's
    # folds, pooled (module docstring). A single string is one model on one manifest.
    model: tuple[str, ...]
    shards: tuple[str, ...]
    out: str
    split: str = "test"
    stride: int = 1  # epochs between windows: 1 = every window (each epoch averaged over up to seq_len windows)
    batch_size: int = 64  # windows per forward pass
    n_boot: int = 2000  # bootstrap resamples (over subjects) for the confidence intervals
    seed: int = 0
    experiment: str = "distsleep-evaluate"
    tracking_uri: str | None = None  # default MLFLOW_TRACKING_URI, else ./mlflow.db
    track: bool = True
    address: str | None = None  # Ray cluster (default $RAY_ADDRESS, else a local one)
    verify_shards: str = "stored"
    allow_shard_commands: bool = False
    progress: bool = True
    sweep: str | None = None  # provenance only: the sweep whose trial models these are (evaluate --sweep)

    def __post_init__(self):
        for name in ("model", "shards"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not self.model or len(self.model) != len(self.shards):
            raise ValueError(f"{len(self.model)} model(s) for {len(self.shards)} manifest(s): give one manifest per "
                             "model (a cross-validation: each fold's model and its own fold manifest, in the same order)")


@dataclass
class _Part:
    """One model on one manifest's split: the whole evaluation, or one fold of a cross-validation."""

    located: Located
    bundle: dict
    shards: str
    manifest: dict
    urls: list[str]
    roles: list[str]
    substituted: dict[str, str]
    notes: list[str]
    learned: set | None
    loader: LoaderConfig


@dataclass
class EvaluationResult:
    out: Path
    rows: list[dict]
    summary: dict
    files: dict[str, Path]
    failed: list[dict]
    substituted: dict[str, str]
    run_id: str | None = None
    probabilities: dict[str, Path] = field(default_factory=dict)
    tracked: bool = True  # False when the MLflow run did not take all of it (then the run is FAILED)

    @property
    def complete(self) -> bool:
        return not self.failed


def score_record(item: tuple) -> dict:
    """Labels and averaged probabilities of the one night in shard `url` (runs as a Ray task); `item` is
    (url, the bundle's bytes in the object store, loader settings), so a fold's bundle is stored once."""
    url, bundle_ref, loader = item
    model, _ = load_model(io.BytesIO(ray.get(bundle_ref)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    predictions = aggregate(score_windows(model, [url], loader, 1, 0, device, num_workers=0))
    if len(predictions.labels) != 1:
        raise ValueError(f"{url}: expected one night in the shard, found {len(predictions.labels)}")
    [(record_id, labels)] = predictions.labels.items()
    return {"record_id": record_id, "labels": labels, "probabilities": predictions.probabilities[record_id]}


def preprocessing_notes(bundle: dict, manifest: dict, where: str) -> list[str]:
    """Differences between the bundle's preprocessing and the shards'; a different epoch length or rate is
    refused (the model is built for its samples per epoch)."""
    trained, shards = bundle["preprocess"], manifest["config"]["preprocess"]
    for key in ("target_rate", "epoch_seconds"):
        if float(trained.get(key, 0)) != float(shards.get(key, 0)):
            raise BundleError(where, f"the shards have {key} {shards.get(key)} but the model was trained with "
                                     f"{trained.get(key)}; preprocess the recordings with the model's settings")
    return [f"{key}: model trained with {trained.get(key)!r}, shards have {shards.get(key)!r}"
            for key in COMPARED_SETTINGS if trained.get(key) != shards.get(key)]


def _write_probabilities(folder: Path, nights: dict[str, dict]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for record_id, night in nights.items():
        paths[record_id] = folder / f"{record_id}.npz"
        with atomic_path(paths[record_id]) as tmp, open(tmp, "wb") as stream:
            np.savez_compressed(stream, labels=night["labels"], probabilities=night["probabilities"],
                                predicted=night["probabilities"].argmax(axis=1))
    for stale in folder.glob("*.npz"):  # an earlier evaluation's records that are not part of this one
        if stale not in paths.values():
            stale.unlink()
    return paths


def _track(cfg: EvaluateConfig, uri: str, parts: list[_Part], result: EvaluationResult) -> tuple[str, bool]:
    """The MLflow evaluation run: tags naming the model run(s) and source(s), metrics, and the written files;
    (its id, whether the store took all of it). A run the store did not take whole is FAILED, not FINISHED."""
    bundle = parts[0].bundle
    tags = {KIND_TAG: "evaluation", MODEL_SOURCE_TAG: " ".join(p.located.name for p in parts), "model": bundle["model"]}
    if all(p.located.run_id for p in parts):  # a cross-validation: every fold's training run, space-separated
        tags[MODEL_RUN_TAG] = " ".join(p.located.run_id for p in parts)
    if cfg.sweep:  # not distsleep.sweep: the sweep's own searches must not find its evaluations
        tags[EVALUATED_SWEEP_TAG] = cfg.sweep
    name = f"evaluate-{bundle['model']}-{cfg.split}" + (f"-{len(parts)}-folds" if len(parts) > 1 else "")
    run_id = client(uri).create_run(experiment_id(uri, cfg.experiment), run_name=name,
                                    tags=tags).info.run_id
    logger = RunLogger(uri, run_id)
    summary = result.summary
    logger.params({"model_source": " ".join(p.located.name for p in parts), "shards": " ".join(cfg.shards),
                   "folds": len(parts), "split": cfg.split, "stride": cfg.stride, "seq_len": int(bundle["seq_len"]),
                   "sweep": cfg.sweep or "none",
                   "n_boot": cfg.n_boot, "seed": cfg.seed, "channels_read": ",".join(summary["channels"]["read"]),
                   "substituted": ",".join(f"{a}->{b}" for a, b in result.substituted.items()) or "none"})
    pooled = summary["pooled"]
    metrics = {"nights": summary["nights"], "failed_nights": len(result.failed)}
    split = cfg.split  # test_kappa only for the test split: compare reads every test_* metric as a test result
    for name in ("accuracy", "kappa", "macro_f1"):
        metrics[f"{split}_{name}"] = pooled[name]
        metrics[f"{split}_{name}_ci_low"], metrics[f"{split}_{name}_ci_high"] = pooled["ci"][name]
        metrics[f"night_{name}_median"] = summary["per_night"][name]["median"]
    metrics.update({f"{split}_f1_{stage}": value for stage, value in pooled["f1"].items()})
    for name, stat in summary["sleep_statistics"].items():
        metrics[f"{name}_bias"] = stat["difference"]["mean"]
    logger.metrics({k: v for k, v in metrics.items() if v is not None and np.isfinite(v)}, step=0)
    logger.artifacts([(path, "evaluation") for path in result.files.values()]
                     + [(path, f"evaluation/{PROBABILITIES}") for path in result.probabilities.values()])
    return run_id, logger.finish("FINISHED" if result.complete else "FAILED")


def _prepare(cfg: EvaluateConfig, model: str, shards: str, uri: str) -> _Part:
    """One model on one manifest's split, every check made before any task starts."""
    located = resolve(model, tracking_uri=uri)
    _, bundle = load_model(located.path)  # refuses an unusable bundle before any task starts
    if bundle.get("task", "staging") != "staging":
        raise BundleError(located.name, f"this model was trained for the {bundle['task']} task; `evaluate` judges "
                                        "sleep staging")
    try:
        manifest, base = load_manifest(shards, allow_commands=cfg.allow_shard_commands)
        identities = shard_identities(manifest, base)
    except (OSError, ValueError) as error:  # unreadable or not JSON, a refused entry, two records on one shard
        raise EvaluationError(shards, f"cannot use this shard manifest: {first_line(str(error))}") from error
    urls = shard_urls(manifest, cfg.split, base)
    if not urls:
        raise EvaluationError(shards, f"the manifest has no {cfg.split} records")
    shard_roles = manifest.get("channels") or manifest["config"]["preprocess"]["channels"]
    roles, substituted = map_roles(bundle, shard_roles, f"the shards of {shards}", located.name)
    notes = preprocessing_notes(bundle, manifest, shards)
    learned = trained_records(bundle["data"]) if isinstance(bundle.get("data"), dict) else None
    overlap = people_overlap(manifest, bundle["data"]) if learned is not None else None
    if overlap is not None and cfg.split != "train":
        seen = overlap.learned[cfg.split]
        if seen:
            raise EvaluationError(shards, f"{located.name} learned from the people of {len(seen)} of its {cfg.split} "
                                          f"records (e.g. {', '.join(seen[:3])}; the same night or another night of "
                                          "the same person), so its scores would measure memorisation: evaluate on "
                                          "a manifest split the way the model's training data was (the same "
                                          "--split-seed or split file, or its own fold manifest) or on people it "
                                          "never saw")
    if overlap is not None and cfg.split == "test":
        picked = overlap.chose_test
        if picked:
            raise EvaluationError(shards, f"{located.name} was selected (its best checkpoint, early stop) on the people "
                                          f"of {len(picked)} of its test records (e.g. {', '.join(picked[:3])}), who "
                                          "would then judge the model they chose: evaluate on a manifest split the way "
                                          "the model's data was (the same --split-seed or split file, or its own fold "
                                          "manifest)")
    loader = LoaderConfig(seq_len=int(bundle["seq_len"]), batch_size=cfg.batch_size, num_workers=0, channels=list(roles),
                          stride=cfg.stride, normalization=bundle.get("normalization", "uv"),
                          checksums=shard_checksums(manifest, base), verify=cfg.verify_shards,
                          identities=identities)
    return _Part(located, bundle, shards, manifest, urls, list(roles), substituted, notes, learned, loader)


def check_poolable(parts: list[_Part], split: str) -> None:
    """Several models pooled (a cross-validation) must judge one dataset, each night once: the same preprocessed
    data (the manifests' preprocessing config) and no record in the split of two manifests."""
    first = parts[0]
    for part in parts[1:]:
        if part.manifest["config"] != first.manifest["config"]:
            raise EvaluationError(part.shards, f"preprocessed differently from {first.shards}: pooled folds must be "
                                               "cut from one preprocessed cohort (`distsleep folds`)")
        if part.bundle["model"] != first.bundle["model"]:
            raise EvaluationError(part.shards, f"its model {part.located.name} is a {part.bundle['model']}, the first "
                                               f"fold's a {first.bundle['model']}: pooled folds evaluate one recipe")
    owner: dict[str, str] = {}
    for part in parts:
        for record in split_records(part.manifest)[split]:
            if record in owner:
                raise EvaluationError(part.shards, f"record {record} is in the {split} split of {owner[record]} too: "
                                                   "pooled folds must not score a night twice (are these the folds of "
                                                   "one cross-validation?)")
            owner[record] = part.shards


def _fold_summary(number: int, part: _Part, nights: dict[str, dict]) -> dict:
    """A fold of a pooled evaluation: its model, manifest and nights, and the metrics of its nights' epochs alone
    (the spread between folds; the pooled figures are those of every fold's epochs together)."""
    entry = {"fold": number, "model": part.located.name, "run_id": part.located.run_id, "manifest": part.shards,
             "manifest_hash": manifest_hash(part.manifest), "records": sorted(nights)}
    if nights:
        true = np.concatenate([n["labels"] for n in nights.values()])
        predicted = np.concatenate([n["probabilities"].argmax(axis=1) for n in nights.values()])
        entry.update({k: v for k, v in staging_metrics(true, predicted).items() if k in ("accuracy", "kappa", "macro_f1")})
    return entry


def run_evaluation(cfg: EvaluateConfig) -> EvaluationResult:
    """Evaluate each model of `cfg.model` on split `cfg.split` of its manifest in `cfg.shards`, the nights pooled
    (module docstring)."""
    uri = cfg.tracking_uri or default_tracking_uri()
    parts = [_prepare(cfg, model, shards, uri) for model, shards in zip(cfg.model, cfg.shards)]
    if len(parts) > 1:
        check_poolable(parts, cfg.split)
    if cfg.track:
        check_reachable(uri)  # before the cluster spends time scoring

    connect_ray(cfg.address)
    items, fold_of = [], {}
    for number, part in enumerate(parts, 1):
        bundle_ref = ray.put(part.located.path.read_bytes())  # once per fold, shared by its nights' tasks
        items += [(url, bundle_ref, part.loader) for url in part.urls]
        fold_of.update({url: number for url in part.urls})
    outcomes = run_each(score_record, items, desc="evaluate", progress=cfg.progress)
    scored = {o.result["record_id"]: {**o.result, "fold": fold_of[o.item[0]]} for o in outcomes if o.ok}
    failed = [{"shard": o.item[0], "reason": o.error} for o in outcomes if not o.ok]
    if not scored:
        raise EvaluationError(" ".join(cfg.shards), "every record failed: "
                              + "; ".join(f"{f['shard']}: {f['reason']}" for f in failed))
    records = {rid: entry for part in parts for rid, entry in part.manifest["records"].items()}
    nights = [Night(rid, str(records.get(rid, {}).get("subject", rid)), night["labels"], night["probabilities"].argmax(axis=1))
              for rid, night in sorted(scored.items())]
    rows, summary = evaluate_nights(nights, n_boot=cfg.n_boot, seed=cfg.seed)
    if len(parts) > 1:
        for row in rows:
            row["fold"] = scored[row["record"]]["fold"]
    first, substituted = parts[0], {k: v for part in parts for k, v in part.substituted.items()}
    learned = [part.learned for part in parts]
    summary.update({
        "complete": not failed,
        "failed": failed,
        "model": {"source": " ".join(p.located.name for p in parts),
                  "run_id": " ".join(p.located.run_id for p in parts) if all(p.located.run_id for p in parts) else None,
                  "name": first.bundle["model"], "stage": first.bundle.get("stage"),
                  "trained_on": first.bundle["preprocess"].get("source"),
                  # the records it learned from, checked against this split's people; None: a bundle does not say
                  "trained_records": None if None in learned else sum(len(x) for x in learned)},
        "data": {"manifest": " ".join(cfg.shards), "manifest_hash": " ".join(manifest_hash(p.manifest) for p in parts),
                 "split": cfg.split, "source": first.manifest["config"]["preprocess"].get("source"),
                 # None: whole recordings; minutes: wake kept around sleep (Sleep-EDF's default 30)
                 "trim_wake_minutes": first.manifest["config"]["preprocess"].get("trim_wake_minutes")},
        "channels": {"model": list(first.bundle["channels"]), "read": first.roles, "substituted": substituted},
        "preprocessing_differences": sorted({note for part in parts for note in part.notes}),
        "windows": {"seq_len": int(first.bundle["seq_len"]), "stride": cfg.stride},
    })
    if len(parts) > 1:
        summary["folds"] = [_fold_summary(number, part, {r: n for r, n in scored.items() if n["fold"] == number})
                            for number, part in enumerate(parts, 1)]
    out = Path(cfg.out)
    result = EvaluationResult(out, rows, summary, {}, failed, substituted)
    result.probabilities = _write_probabilities(out / PROBABILITIES, scored)
    result.files = write_evaluation(out, nights, rows, summary)
    if cfg.track:
        result.run_id, result.tracked = _track(cfg, uri, parts, result)
    return result


def format_summary(result: EvaluationResult) -> str:
    """A few lines for the terminal."""
    s = result.summary
    pooled, night = s["pooled"], s["per_night"]["kappa"]
    folds = s.get("folds")
    trim = s["data"].get("trim_wake_minutes")
    lines = [f"{s['nights']} nights of {s['subjects']} subjects ({s['epochs']} scored epochs"
             + ("" if trim is None else f", {trim:g} min of wake kept around sleep") + "), model "
             f"{s['model']['name']} " + (f"({len(folds)} folds pooled, each night scored by the fold model that never "
                                         "saw its person)" if folds else f"({s['model']['source']})"),
             f"pooled: accuracy {pooled['accuracy']:.3f}  kappa {pooled['kappa']:.3f} (95% CI {pooled['ci']['kappa'][0]:.3f}"
             f"..{pooled['ci']['kappa'][1]:.3f})  macro-F1 {pooled['macro_f1']:.3f}"]
    if night["median"] is not None:
        lines.append(f"per-night kappa: median {night['median']:.3f} (IQR {night['q25']:.3f}..{night['q75']:.3f})")
    kappas = [f["kappa"] for f in folds or [] if "kappa" in f]
    if len(kappas) > 1:
        lines.append(f"per fold: kappa {' / '.join(f'{k:.3f}' for k in kappas)} (mean {np.mean(kappas):.3f}, "
                     f"sd {np.std(kappas, ddof=1):.3f})")
    if s["model"]["trained_records"] is None:
        lines.append("not checked for people the model learned from: the bundle does not record its training data")
    for role, used in result.substituted.items():
        lines.append(f"channel substituted: the model's {role} was read from the shards' {used} (cross-dataset)")
    for note in s["preprocessing_differences"]:
        lines.append(f"preprocessing differs: {note}")
    for failure in result.failed:
        lines.append(f"FAILED {failure['shard']}: {failure['reason']}")
    lines.append(f"files in {result.out.resolve()}: " + ", ".join(p.name for p in result.files.values())
                 + f", {PROBABILITIES}/*.npz ({len(result.probabilities)})")
    if result.run_id and not result.tracked:
        lines.append(f"MLflow evaluation run {result.run_id}: FAILED, the store did not take all of it (the files "
                     "above are complete; evaluate again to record it)")
    elif result.run_id:
        lines.append(f"MLflow evaluation run {result.run_id}")
    return "\n".join(lines)
