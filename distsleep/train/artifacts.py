"""What a finished training run leaves in MLflow besides metrics: everything needed to trust, compare and
reuse it — figures, the exact configuration and data, the environment, and the model bundle."""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import mlflow
import ray
import torch

from distsleep.bundle import MODEL, model_bundle
from distsleep.night_metrics import Night, evaluate_nights, write_evaluation
from distsleep.plots import confusion_png, f1_table, hypnogram_png
from distsleep.shards.manifest import code_version, manifest_hash
from distsleep.tasks import class_names
from distsleep.tracking import PER_NIGHT_ARTIFACTS


def make_bundle(cfg, model_cfg, weights: dict, manifest: dict, roles, trained_before=(), selected_before=()) -> dict:
    """The run's model bundle (`distsleep.bundle`): its weights, preprocessing, channels and training data."""
    return model_bundle(model=cfg.model, model_config=model_cfg, weights=weights, manifest=manifest, roles=roles,
                        seq_len=cfg.seq_len, stage=cfg.stage, task=cfg.task, trained_before=trained_before,
                        selected_before=selected_before)




def per_night_files(directory: Path, predictions, manifest: dict, seed: int) -> list[Path]:
    """The test records judged per night (distsleep.night_metrics): per_night.csv, summary.json (subject-bootstrap
    CIs, 1000 resamples) and the plots, the same files `distsleep evaluate` writes."""
    records = manifest["records"]
    nights = [Night(rid, str(records.get(rid, {}).get("subject", rid)), predictions.labels[rid], predictions.predicted(rid))
              for rid in sorted(predictions.labels)]
    rows, summary = evaluate_nights(nights, n_boot=1000, seed=seed)
    return list(write_evaluation(directory, nights, rows, summary).values())


def _environment(world: int, cfg) -> dict:
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "host": platform.node(),
        "torch": torch.__version__, "ray": ray.__version__, "deepspeed": version("deepspeed"),
        "mlflow": mlflow.__version__, "distsleep": code_version(), "world_size": world,
        "seed": cfg.seed, "worker_seeds": [cfg.seed + r for r in range(world)],
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def write_run_artifacts(directory: Path, *, cfg, model_cfg, ds_config, manifest, roles, test_metrics, predictions,
                        state, weights, world, augmented=(), trained_before=(), selected_before=()) -> list[tuple[Path, str | None]]:
    """Write the run's artifacts into `directory`; returns (file, MLflow artifact folder) pairs.
    `trained_before` / `selected_before`: the records the run's --init-from sources and synthetic epochs' generators
    learned from / that chose its sources (data.json and the bundle keep them, `bundle.bundle_data`)."""
    files: list[tuple[Path, str | None]] = []

    def dump(name: str, payload, folder: str | None = None) -> None:
        path = directory / name
        path.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
        files.append((path, folder))

    dump("config.json", {"train": cfg.to_dict(), "model": model_cfg.to_dict(), "deepspeed": ds_config})
    dump("environment.json", _environment(world, cfg))
    splits = {s: sorted(r for r, e in manifest["records"].items() if e["split"] == s) for s in ("train", "val", "test")}
    dump("data.json", {"manifest_config_hash": manifest.get("config_hash"), "manifest_code_version": manifest.get("code_version"),
                       "manifest_hash": manifest_hash(manifest),
                       "shards": cfg.shards, "channels": list(roles), "records": splits,
                       "split_source": manifest.get("split"),  # stable hash + seed, or a published split file
                       "evaluated_test_records": sorted(predictions.labels),
                       "trained_before": sorted(trained_before), "selected_before": sorted(selected_before),
                       # synthetic epochs: training stream only (never validation/test), with their provenance
                       "augmentation": {"manifests": list(cfg.augment_shards), "shards": list(augmented)},
                       "preprocess": manifest["config"]["preprocess"]})
    dump("checkpoint.json", {"evaluated": "best validation", "best_step": state["best_step"],
                             "best_" + cfg.select_metric: state["best_metric"], "last_step": state["step"],
                             "stopped_early": state["stopped_early"]})
    dump("test_metrics.json", test_metrics)
    table = directory / "per_class_f1.md"
    table.write_text(f1_table(test_metrics) + "\n")
    files.append((table, None))
    files.append((confusion_png(test_metrics["confusion"], directory / "confusion_matrix.png",
                                title=f"{cfg.model} {cfg.stage} {cfg.task}: test confusion (rows: true)",
                                names=class_names(cfg.task)), None))
    if predictions.labels and cfg.task == "staging":
        record_id = sorted(predictions.labels)[0]
        path = hypnogram_png(predictions.predicted(record_id), directory / f"hypnogram_{record_id}.png",
                             true=predictions.labels[record_id], probabilities=predictions.probabilities[record_id],
                             title=f"{record_id}: true vs predicted ({cfg.model} {cfg.stage})")
        files.append((path, None))
        night_files = per_night_files(directory / PER_NIGHT_ARTIFACTS, predictions, manifest, cfg.seed)
        files += [(path, PER_NIGHT_ARTIFACTS) for path in night_files]
    bundle = directory / MODEL.file
    torch.save(make_bundle(cfg, model_cfg, weights, manifest, roles, trained_before, selected_before), bundle)
    files.append((bundle, MODEL.folder))
    return files
