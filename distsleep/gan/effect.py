"""Does Physio-GAN augmentation help? The same training run with and without the synthetic epochs.

For every seed, two ordinary training runs (`run_training`: Ray Train + DeepSpeed, MLflow) that differ only
in `augment_shards`: "real" trains on the manifest's training records, "augmented" on those plus the
augmentation's synthetic epochs. Both evaluate the same real test records, so their per-class F1 (N1 above
all) compare directly. Seeds pair the runs: the effect is reported as the mean paired difference
(augmented - real) with every seed's difference, because on small test sets the seed-to-seed spread of
N1 F1 is often as large as the effect.

MLflow: a parent run (tag `distsleep.kind` = "augmentation-effect") with the summary metrics
(`<arm>_mean_<metric>`, `delta_<metric>`), effect.json, the comparison table and the per-class F1 plot; the
arm runs are its children (tag `augmentation` = arm) and appear in `distsleep compare --experiment`.
Relaunching the same name reuses finished arm runs and resumes unfinished ones; the summary then goes to
the unfinished parent, or to a new parent run when the last one finished (e.g. after adding seeds).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distsleep.plots import pyplot
from distsleep.shards.augmented import load_augmentation
from distsleep.stages import STAGE_NAMES
from distsleep.tracking import KIND_TAG, RunLogger, check_reachable, compare, find_or_create_run, find_run
from distsleep.train.launch import run_training

ARMS = ("real", "augmented")
KIND = "augmentation-effect"  # value of KIND_TAG on the parent run
METRICS = ("test_f1_N1", "test_macro_f1", "test_accuracy", "test_kappa", *(f"test_f1_{s}" for s in STAGE_NAMES if s != "N1"))

log = logging.getLogger("distsleep.gan")


@dataclass
class EffectResult:
    run_id: str  # the parent MLflow run
    runs: dict  # (seed, arm) -> MLflow run id
    summary: dict  # see `summarise`
    files: dict  # name -> path (a runs:/ URI without out_dir; none when the run is not recorded)
    recorded: bool = True  # False when the store did not take the parent run whole (then it is FAILED)


def default_name(model: str) -> str:
    """The name an effect comparison of `model` runs under unless given one (its arms add -s<seed>-<arm>)."""
    return f"gan-effect-{model}"


def arm_config(base, augmentation: str, arm: str, seed: int, parent_run_id: str | None = None):
    """The TrainConfig of one arm: `base` with this seed, with or without the augmentation."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    return dataclasses.replace(base, seed=seed, augment_shards=[augmentation] if arm == "augmented" else [],
                               name=f"{base.name}-s{seed}-{arm}", parent_run_id=parent_run_id,
                               run_tags={**base.run_tags, "augmentation": arm})


def summarise(metrics: dict) -> dict:
    """metrics: (seed, arm) -> logged metrics. Per metric: each arm's mean and SD over seeds, the paired
    differences (augmented - real) per seed and their mean. Seeds missing an arm or a metric are left out."""
    seeds = sorted({seed for seed, _ in metrics})
    out = {"seeds": seeds, "metrics": {}}
    for key in METRICS:
        values = {arm: [metrics[s, arm][key] for s in seeds if key in metrics.get((s, arm), {})] for arm in ARMS}
        paired = [metrics[s, "augmented"][key] - metrics[s, "real"][key] for s in seeds
                  if key in metrics.get((s, "augmented"), {}) and key in metrics.get((s, "real"), {})]
        if not paired:
            continue
        out["metrics"][key] = {
            **{arm: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0} for arm, v in values.items()},
            "delta_per_seed": paired, "delta_mean": statistics.fmean(paired),
        }
    return out


def format_summary(summary: dict) -> str:
    """One line per metric: real mean +- SD, augmented mean +- SD, paired difference (points)."""
    lines = [f"effect of augmentation over {len(summary['seeds'])} seed(s) {summary['seeds']} (test records, %; "
             "difference = augmented - real, paired by seed)"]
    for key, m in summary["metrics"].items():
        scale = 1.0 if key == "test_kappa" else 100.0
        unit = "" if key == "test_kappa" else " points"
        cell = lambda arm: f"{scale * m[arm]['mean']:.2f} ± {scale * m[arm]['sd']:.2f}"  # noqa: E731
        deltas = ", ".join(f"{scale * d:+.2f}" for d in m["delta_per_seed"])
        lines.append(f"  {key.removeprefix('test_'):>9}: real {cell('real'):>15}  augmented {cell('augmented'):>15}  "
                     f"difference {scale * m['delta_mean']:+.2f}{unit} ({deltas})")
    return "\n".join(lines)


def per_class_png(summary: dict, metrics: dict, path: str | Path, title: str = "") -> Path:
    """Per-class test F1 of both arms: bars = mean over seeds, dots = single seeds."""
    keys = [f"test_f1_{s}" for s in STAGE_NAMES] + ["test_macro_f1"]
    labels = [*STAGE_NAMES, "macro"]
    x = np.arange(len(keys))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    for offset, arm, color in ((-0.2, "real", "tab:gray"), (0.2, "augmented", "tab:orange")):
        means = [100 * summary["metrics"].get(k, {}).get(arm, {}).get("mean", np.nan) for k in keys]
        ax.bar(x + offset, means, width=0.4, color=color, label=arm)
        for seed in summary["seeds"]:
            dots = [100 * metrics.get((seed, arm), {}).get(k, np.nan) for k in keys]
            ax.plot(x + offset, dots, "k.", ms=3)
    ax.set_xticks(x, labels)
    ax.set_ylabel("test F1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "per-class F1 with and without Physio-GAN augmentation", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def run_effect(base, augmentation: str, seeds, out_dir: str | Path | None = None,
               address: str | None = None) -> EffectResult:
    """Train both arms for every seed (finished arm runs are reused), then summarise and log (module docstring)."""
    uri = base.resolved_tracking_uri
    check_reachable(uri)
    base = dataclasses.replace(base, tracking_uri=uri)
    load_augmentation(augmentation)  # a missing or incomplete augmentation fails before anything trains
    parent, _ = find_or_create_run(uri, base.experiment, base.name, tags={KIND_TAG: KIND, "model": base.model})
    tracker = RunLogger(uri, parent)
    tracker.params({"augmentation": str(augmentation), "seeds": json.dumps(list(seeds)), "model": base.model,
                    "max_steps": str(base.max_steps), "shards": base.shards})
    runs, metrics = {}, {}
    for seed in seeds:
        for arm in ARMS:
            cfg = arm_config(base, str(augmentation), arm, seed, parent)
            done = find_run(uri, cfg.experiment, cfg.name, status="FINISHED")
            if done is not None:
                log.info("%s already finished (MLflow run %s); not trained again", cfg.name, done.info.run_id)
                runs[seed, arm], metrics[seed, arm] = done.info.run_id, dict(done.data.metrics)
                continue
            outcome = run_training(cfg, address, display_name=f"{base.model} seed {seed} {arm}")
            runs[seed, arm], metrics[seed, arm] = outcome.run_id, outcome.metrics
    summary = summarise(metrics)
    rows = compare.collect(uri, run_ids=[runs[key] for key in sorted(runs)])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(out_dir) if out_dir else Path(scratch)
        files = compare.write_comparison(rows, out, title=f"{base.model}: with vs without Physio-GAN augmentation")
        files["effect"] = out / "effect.json"
        files["effect"].write_text(json.dumps({"summary": summary, "runs": {f"{s}/{a}": r for (s, a), r in runs.items()},
                                               "augmentation": str(augmentation)}, indent=1))
        files["per_class"] = per_class_png(summary, metrics, out / "per_class_f1_effect.png")
        tracker.artifacts([(path, None) for path in files.values()])
        tracker.metrics({**{f"{arm}_mean_{k}": m[arm]["mean"] for k, m in summary["metrics"].items() for arm in ARMS},
                         **{f"delta_{k}": m["delta_mean"] for k, m in summary["metrics"].items()}}, step=0)
        # FAILED unless the store took it all; a relaunch reuses the run (its arms are found finished) and logs again
        recorded = tracker.finish("FINISHED")
        if not out_dir:  # the files were written to a scratch folder: MLflow holds them only if the run is whole
            files = {name: f"runs:/{parent}/{Path(path).name}" for name, path in files.items()} if recorded else {}
    return EffectResult(run_id=parent, runs=runs, summary=summary, files=files, recorded=recorded)
