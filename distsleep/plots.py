"""Figures people would rather look at than read: confusion matrices and hypnograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distsleep.stages import STAGE_NAMES


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only; no display on cluster nodes). Imported on first use, not
    with this module: most processes that import it (training workers other than rank 0, preprocessing tasks)
    never draw, and pyplot costs each of them ~0.7 s of CPU at start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot

# Hypnogram convention: wake on top, REM drawn between wake and N1, deeper sleep lower.
HYPNOGRAM_LEVEL = {0: 4, 4: 3, 1: 2, 2: 1, 3: 0}
HYPNOGRAM_TICKS = ["N3", "N2", "N1", "REM", "W"]


def confusion_png(confusion: list[list[int]], path: str | Path, title: str = "", names=None) -> Path:
    names = list(names or STAGE_NAMES)
    matrix = np.asarray(confusion, dtype=float)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(matrix[i, j])}\n{normalised[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (rows: true stage)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _levels(stages: np.ndarray) -> np.ndarray:
    return np.array([HYPNOGRAM_LEVEL.get(int(s), np.nan) for s in stages], dtype=float)


def hypnogram_png(predicted: np.ndarray, path: str | Path, true: np.ndarray | None = None,
                  probabilities: np.ndarray | None = None, title: str = "", epoch_seconds: float = 30.0) -> Path:
    """True (if given) and predicted hypnograms on one time axis, plus predicted class probabilities."""
    rows = 1 + (true is not None) + (probabilities is not None)
    plt = pyplot()
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.6 * rows + 0.4), dpi=110, sharex=True, squeeze=False)
    hours = np.arange(len(predicted) + 1) * epoch_seconds / 3600
    panels = ([("true", true)] if true is not None else []) + [("predicted", predicted)]
    for ax, (name, stages) in zip(axes[:, 0], panels):
        levels = _levels(stages)
        ax.step(hours, np.append(levels, levels[-1] if len(levels) else np.nan), where="post", lw=0.9,
                color="black" if name == "true" else "tab:blue")
        rem = np.flatnonzero(np.asarray(stages) == 4)
        ax.hlines(np.full(len(rem), 3), hours[rem], hours[rem + 1], colors="tab:red", lw=2.5)
        ax.set_yticks(range(5), HYPNOGRAM_TICKS, fontsize=7)
        ax.set_ylabel(name, fontsize=8)
        ax.set_ylim(-0.5, 4.5)
    if probabilities is not None:
        ax = axes[-1, 0]
        ax.stackplot(hours[:-1], np.asarray(probabilities).T, labels=STAGE_NAMES, step="post", alpha=0.85)
        ax.set_ylim(0, 1)
        ax.set_ylabel("p(stage)", fontsize=8)
        ax.legend(loc="upper right", fontsize=6, ncols=5)
    axes[-1, 0].set_xlabel("hours from recording start")
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def f1_table(metrics: dict) -> str:
    """Per-class F1 and the summary metrics as a Markdown table (AUROC too for binary tasks)."""
    names = list(metrics["f1"])
    summary = [("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("kappa", "kappa"), ("AUROC", "auroc")]
    summary = [(title, key) for title, key in summary if key in metrics]
    head = "| " + " | ".join([title for title, _ in summary] + [f"F1 {n}" for n in names]) + " |"
    sep = "|" + "---|" * (len(summary) + len(names))
    values = [metrics[key] for _, key in summary] + [metrics["f1"][n] for n in names]
    return "\n".join([head, sep, "| " + " | ".join(f"{v:.3f}" for v in values) + " |"])


def metric_curves_png(rows, metrics: list[tuple[str, str]], path: str | Path, title: str = "", baseline=None,
                      spread_suffix: str | None = None) -> Path:
    """One line per metric against the masking ratio (mean over the rows sharing a ratio, range shaded).

    `rows` have `.mask_ratio` and `.metrics`; `baseline` (a row or None) is drawn as dashed lines. With
    `spread_suffix`, a row holding its metric's SD as `<key><spread_suffix>` (a mean over seeds) shades ± that SD.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (key, name) in enumerate(metrics):
        by_ratio: dict[float, list[tuple[float, float]]] = {}  # ratio -> (value, its SD between seeds or 0)
        for row in rows:
            if key in row.metrics:
                sd = row.metrics.get(f"{key}{spread_suffix}", 0.0) if spread_suffix else 0.0
                by_ratio.setdefault(row.mask_ratio, []).append((row.metrics[key], sd if np.isfinite(sd) else 0.0))
        if not by_ratio:
            continue
        ratios = sorted(by_ratio)
        x = np.asarray(ratios) * 100
        mean = np.asarray([np.mean([v for v, _ in by_ratio[r]]) for r in ratios])
        color = colors[i % len(colors)]
        ax.plot(x, mean, marker="o", color=color, label=name)
        low = np.asarray([min(v - sd for v, sd in by_ratio[r]) for r in ratios])
        high = np.asarray([max(v + sd for v, sd in by_ratio[r]) for r in ratios])
        if np.any(high > low):
            ax.fill_between(x, low, high, color=color, alpha=0.15)
        best = int(np.argmax(mean))
        ax.scatter([x[best]], [mean[best]], s=90, facecolors="none", edgecolors=color, zorder=3)
        if baseline is not None and key.removeprefix("pretrain_") in baseline.metrics and not key.startswith("pretrain_"):
            ax.axhline(baseline.metrics[key], color=color, linestyle="--", linewidth=1, alpha=0.8)
    if baseline is not None:
        ax.plot([], [], color="gray", linestyle="--", label="YASA baseline (same records)")
    ax.set_xlabel("masking ratio (%)")
    ax.set_ylabel("test metric")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # runs without these metrics leave the axes empty
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def confusion_grid_png(items: list[tuple[str, list[list[int]]]], path: str | Path, columns: int = 4) -> Path:
    """Row-normalised confusion matrices side by side, one panel per (title, matrix)."""
    n = len(items)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.1 * rows), dpi=110, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (title, confusion) in zip(axes.flat, items):
        matrix = np.asarray(confusion, dtype=float)
        normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        k = len(matrix)
        names = STAGE_NAMES if k == len(STAGE_NAMES) else ["none", "event"] if k == 2 else [str(i) for i in range(k)]
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{normalised[i, j]:.0%}", ha="center", va="center", fontsize=6,
                        color="white" if normalised[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), names, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_title(title, fontsize=8)
    fig.supxlabel("predicted", fontsize=8)
    fig.supylabel("true", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def kappa_distribution_png(kappas, path: str | Path, title: str = "") -> Path:
    """Per-night Cohen's kappa: every night as a dot over a box (median, IQR), plus a histogram."""
    values = np.asarray([k for k in kappas if np.isfinite(k)], dtype=float)
    plt = pyplot()
    fig, (box, hist) = plt.subplots(1, 2, figsize=(7.6, 3.4), dpi=120, gridspec_kw={"width_ratios": [1, 2]})
    if values.size:
        box.boxplot(values, widths=0.5, showfliers=False)
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, values.size)  # fixed: same file every run
        box.scatter(1 + jitter, values, s=10, alpha=0.6, color="tab:blue", zorder=3)
        hist.hist(values, bins=min(20, max(5, values.size // 2)), color="tab:blue", alpha=0.8)
        hist.axvline(np.median(values), color="black", lw=1, ls="--", label=f"median {np.median(values):.3f}")
        hist.legend(fontsize=7)
    box.set_xticks([1], [f"{values.size} nights"])
    box.set_ylabel("Cohen's kappa")
    hist.set_xlabel("Cohen's kappa")
    hist.set_ylabel("nights")
    fig.suptitle(title or "per-night agreement with the scorer", fontsize=9)
    return _save(fig, path)


def bland_altman_png(true, predicted, path: str | Path, name: str, unit: str = "") -> Path:
    """Bland-Altman plot of one sleep statistic: difference (predicted - true) against the pair's mean, with
    the mean bias and the 95 % limits of agreement (bias +- 1.96 SD of the differences)."""
    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    ok = np.isfinite(true) & np.isfinite(predicted)
    mean, diff = (true[ok] + predicted[ok]) / 2, predicted[ok] - true[ok]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.0), dpi=120)
    ax.scatter(mean, diff, s=12, alpha=0.7, color="tab:blue")
    label = f"{name} ({unit})" if unit else name
    if diff.size:
        bias, sd = float(np.mean(diff)), float(np.std(diff, ddof=1)) if diff.size > 1 else 0.0
        ax.axhline(bias, color="black", lw=1, label=f"bias {bias:+.1f}")
        for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
            ax.axhline(limit, color="tab:red", lw=1, ls="--")
        ax.plot([], [], color="tab:red", ls="--", label=f"95% limits {bias - 1.96 * sd:+.1f} .. {bias + 1.96 * sd:+.1f}")
        ax.legend(fontsize=7)
    ax.axhline(0, color="gray", lw=0.6)
    ax.set_xlabel(f"mean of scorer and model, {label}")
    ax.set_ylabel(f"model - scorer, {label}")
    ax.set_title(f"Bland-Altman: {name}, {diff.size} nights", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def paired_differences_png(items: list[tuple[str, float, float, float]], reference: str, path: str | Path,
                           metric: str = "Cohen's kappa", title: str = "") -> Path:
    """Forest plot of paired per-night differences to a reference run: one line per (label, mean, CI low, CI high),
    the reference at 0; an interval that crosses 0 shows no difference on these nights."""
    labels = [reference, *(label for label, *_ in items)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.38 * len(labels)), dpi=120)
    y = np.arange(len(labels))[::-1]
    ax.axvline(0, color="gray", lw=1)
    ax.scatter([0], [y[0]], marker="D", color="black", zorder=3)
    for row, (_, mean, low, high) in zip(y[1:], items):
        color = "tab:blue" if low > 0 else "tab:red" if high < 0 else "tab:gray"
        ax.plot([low, high], [row, row], color=color, lw=2)
        ax.scatter([mean], [row], color=color, zorder=3)
    ax.set_yticks(y, [f"{labels[0]} (reference)", *labels[1:]], fontsize=7)
    ax.set_xlabel(f"per-night {metric} minus the reference's, mean and 95 % CI (subjects resampled)", fontsize=8)
    ax.set_title(title or f"paired on the same test nights vs {reference}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write the figure under a temporary name and rename it into place (a half-written PNG never shows)."""
    from distsleep.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt = pyplot()
    plt.close(fig)
    return Path(path)
