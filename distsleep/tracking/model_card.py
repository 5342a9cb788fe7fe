"""The model card of a registered model version: what a reader of the MLflow model registry needs to judge a model
without opening its training run. What it is, what it learned from, how its checkpoint was chosen (on
validation), and how it scored on the test people it never saw, pooled and per night.

`model_card(run, nights, name, version)` is pure: the training run as MLflow returns it and the run's per-night
summary (`per_night/summary.json`, absent for runs that predate it) in, (markdown description, version tags)
out. `distsleep.bundle.register_model` writes both onto the version it registers.
"""

from __future__ import annotations

from distsleep.stages import STAGE_NAMES

TEST_FIGURES = (("accuracy", "accuracy", True), ("kappa", "κ", False), ("macro_f1", "macro-F1", True))


def _share(value: float, percent: bool) -> str:
    return f"{100 * value:.1f} %" if percent else f"{value:.3f}"


def _test_line(metrics: dict, nights: dict | None) -> str | None:
    figures = [f"{label} {_share(metrics[f'test_{key}'], percent)}" for key, label, percent in TEST_FIGURES
               if f"test_{key}" in metrics]
    if not figures:  # a task of other metrics (AUROC, ...): every test metric as logged
        figures = [f"{k.removeprefix('test_')} {v:.3f}" for k, v in sorted(metrics.items()) if k.startswith("test_")]
    if not figures:
        return None
    who = f" ({nights['nights']} nights of {nights['subjects']} people outside the training split)" if nights else ""
    line = f"- Test{who}: {', '.join(figures)}"
    if all(f"test_f1_{s}" in metrics for s in STAGE_NAMES):
        line += "; F1 " + " ".join(f"{s} {100 * metrics[f'test_f1_{s}']:.0f}" for s in STAGE_NAMES)
    return line + "."


def _night_line(nights: dict | None) -> str | None:
    kappa = ((nights or {}).get("per_night") or {}).get("kappa") or {}
    if kappa.get("mean") is None:
        return None
    low, high = kappa["ci_mean"]
    return (f"- κ per night: mean {kappa['mean']:.3f} (95 % CI {low:.3f}–{high:.3f}, people resampled), median "
            f"{kappa['median']:.3f} (IQR {kappa['q25']:.3f}–{kappa['q75']:.3f}).")


def model_card(run, nights: dict | None, name: str, version: str) -> tuple[str, dict[str, str]]:
    """(description, tags) of version `version` of registered model `name`, registered from training run `run`."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    model, task, stage = tags.get("model", params.get("train.model", "?")), tags.get("task", "staging"), tags.get("stage", "?")
    size = params.get("train.model_size")
    parameters = tags.get("parameters")
    head = f"**{model}** (preset `{size or '?'}`" + (f", {int(parameters):,} parameters" if parameters else "") + \
        f"), {stage} stage, {task} task."
    lines = [head, ""]
    lines.append(f"- Data: manifest `{params.get('data.manifest_hash', '?')}` (`{params.get('train.shards', '?')}`), "
                 f"channels `{params.get('data.channels', '?')}`, windows of {params.get('train.seq_len', '?')} epochs.")
    select = params.get("train.select_metric", "?")
    best = metrics.get(f"val_best_{select}")
    lines.append(f"- Checkpoint: step {tags.get('best_step', '?')}, the best validation {select}"
                 + (f" ({best:.3f})" if best is not None else "") + "; the test figures chose nothing.")
    lines += [line for line in (_test_line(metrics, nights), _night_line(nights)) if line]
    lines.append(f"- Training run `{run.info.run_id}`. Use it as `models:/{name}/{version}` with `distsleep predict`, "
                 "`evaluate` or `export`.")
    card_tags = {"model": model, "task": task, "stage": stage, "model_size": size or "",
                 "data.manifest_hash": params.get("data.manifest_hash", ""), "data.channels": params.get("data.channels", ""),
                 **{f"test_{key}": f"{metrics[f'test_{key}']:.4f}" for key, _, _ in TEST_FIGURES if f"test_{key}" in metrics}}
    if nights:
        card_tags["test_nights"] = str(nights["nights"])
    return "\n".join(lines), {k: v for k, v in card_tags.items() if v}
