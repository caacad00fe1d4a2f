"""Figures for the run report (matplotlib, headless Agg backend).

* ``plot_class_profiles`` — per channel (rows) and class (columns): the median and 10-90 %
  band over time of the real records and of each synthetic set, in original units.
* ``plot_examples``       — a few individual series per class: real vs each synthetic set.
* ``plot_metric_bars``    — TSTR AUROC / AUPRC / minority F1 per method with 95 % CI whiskers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_class_profiles", "plot_examples", "plot_metric_bars"]

COLORS = {"real": "#444444", "unguided": "#1f77b4", "tardiff": "#d62728"}


def _color(name: str, k: int) -> str:
    return COLORS.get(name, f"C{k + 2}")


def plot_class_profiles(
    sets: dict[str, tuple[np.ndarray, np.ndarray]], channels: tuple[str, ...], path: str | Path, title: str = ""
) -> None:
    """``sets`` maps a name ("real", "unguided", "tardiff", ...) to (x [N, C, L], y [N])."""
    fig, axes = plt.subplots(len(channels), 2, figsize=(10, 2.3 * len(channels)), sharex=True, squeeze=False)
    for col, label in enumerate((0, 1)):
        for k, (name, (x, y)) in enumerate(sets.items()):
            xs = x[y == label]
            if len(xs) == 0:
                continue
            steps = np.arange(xs.shape[2])
            lo, med, hi = np.percentile(xs, [10, 50, 90], axis=0)
            for row in range(len(channels)):
                ax = axes[row, col]
                ax.plot(steps, med[row], color=_color(name, k), lw=1.6, label=f"{name} (n={len(xs)})")
                ax.fill_between(steps, lo[row], hi[row], color=_color(name, k), alpha=0.12)
        axes[0, col].set_title(f"class {label}")
        axes[0, col].legend(fontsize=7, loc="best")
    for row, ch in enumerate(channels):
        axes[row, 0].set_ylabel(ch)
    for col in range(2):
        axes[-1, col].set_xlabel("time step")
    fig.suptitle(title or "median and 10-90 % band per class: real vs synthetic")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
    channels: tuple[str, ...],
    path: str | Path,
    per_class: int = 3,
) -> None:
    """First ``per_class`` series of each class from each set, one row per channel."""
    names = list(sets)
    fig, axes = plt.subplots(len(channels), 2 * len(names), figsize=(3.2 * 2 * len(names), 2.0 * len(channels)),
                             sharex=True, squeeze=False)
    for j, name in enumerate(names):
        x, y = sets[name]
        for label in (0, 1):
            col = 2 * j + label
            xs = x[y == label][:per_class]
            for row in range(len(channels)):
                for series in xs:
                    axes[row, col].plot(series[row], color=_color(name, j), lw=0.9, alpha=0.8)
            axes[0, col].set_title(f"{name}, class {label}", fontsize=9)
    for row, ch in enumerate(channels):
        axes[row, 0].set_ylabel(ch)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_metric_bars(tstr: dict[str, dict], path: str | Path, title: str = "TSTR on the real test split") -> None:
    """``tstr`` maps method -> {"auroc", "auprc", "minority_f1", "ci95": {...}}."""
    metrics = ("auroc", "auprc", "minority_f1")
    methods = list(tstr)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, metric in zip(axes, metrics):
        means = [tstr[m].get(metric, np.nan) for m in methods]
        errs = [(tstr[m].get("ci95") or {}).get(metric, np.nan) for m in methods]
        errs = [0.0 if e is None or not np.isfinite(e) else e for e in errs]
        ax.bar(range(len(methods)), means, yerr=errs, capsize=4,
               color=[_color(m, k) for k, m in enumerate(methods)])
        ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
        ax.set_title(metric)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_site_bars(site_tstr: dict[str, dict[str, dict]], path: str | Path, metric: str = "auprc") -> None:
    """Grouped bars: one group per site, one bar per method (``site_tstr[site][method][metric]``)."""
    sites = list(site_tstr)
    methods = list(next(iter(site_tstr.values())))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(sites)), 3.4))
    for k, m in enumerate(methods):
        vals = [site_tstr[s][m].get(metric, np.nan) for s in sites]
        errs = [(site_tstr[s][m].get("ci95") or {}).get(metric) for s in sites]
        errs = [0.0 if e is None or not np.isfinite(e) else e for e in errs]
        ax.bar(np.arange(len(sites)) + k * width, vals, width, yerr=errs, capsize=3, label=m, color=_color(m, k))
    ax.set_xticks(np.arange(len(sites)) + width * (len(methods) - 1) / 2, sites)
    ax.set_ylabel(metric)
    ax.set_title(f"TSTR {metric} per site (each site's own test split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
