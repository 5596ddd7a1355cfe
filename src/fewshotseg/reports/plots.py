"""Figures of finished runs, in the style of the paper's Fig. 3 (UHO), Fig. 4 (FP-k), Fig. 6/7 (weight distances)
and training curves.

Figures are drawn on `matplotlib.figure.Figure` objects rather than through pyplot, so making a report neither
depends on nor changes the process's backend, and figures are freed as soon as they are saved.
Each function takes the parsed file contents (checked by `reports.report`), writes one PNG and returns its path.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from fewshotseg.reports.tables import best_trial, is_number, k_values

DPI = 120


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


# --- UHO (Fig. 3) -------------------------------------------------------------------------------------------------


def gp_fit(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """GP mean and standard deviation of y(x) on `grid`, or the reason no fit can be drawn.

    A Matern-5/2 kernel plus white noise on normalised targets is the usual model of a noisy objective over a log
    learning rate (and close to Optuna's GPSampler); the white term keeps the fit from threading every noisy point.
    """
    if len(x) < 3 or np.unique(x).size < 2:
        return "too few completed trials for a GP fit"
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import Matern, WhiteKernel
    except ImportError:
        return "GP fit omitted: scikit-learn is not installed"
    kernel = Matern(length_scale=0.5, length_scale_bounds=(1e-2, 1e2), nu=2.5) + WhiteKernel(
        noise_level=0.1, noise_level_bounds=(1e-6, 1e1))
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x.reshape(-1, 1), y)
    mean, std = gp.predict(grid.reshape(-1, 1), return_std=True)
    return mean, std


def _log_limits(values: Sequence[float]) -> tuple[float, float]:
    """x limits in log10 units, padded so points at the ends are not cut by the frame."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    pad = max(0.05 * (hi - lo), 0.1)
    return lo - pad, hi + pad


def plot_tuning(trials: Sequence[Mapping[str, Any]], title: str, path: Path, *, best_number: Any = None) -> Path:
    """Fig. 3: validation mean IoU of each completed trial against its learning rate, with a GP fit.

    Points are coloured by the trial's median early-stopping steps (the other half of omega), circles for the
    random start-up trials and squares for the GP sampler's; failed trials are crosses on the x axis; the best
    trial (`best_number`, else the best completed) is ringed and labelled.
    """
    done = [t for t in trials if t.get("state") == "COMPLETE" and is_number(t.get("value"))
            and is_number(t["params"].get("lr"))]
    failed = [t for t in trials if t.get("state") == "FAIL"]
    failed_lr = [t["params"]["lr"] for t in failed if is_number(t["params"].get("lr"))]
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    ax.set_xscale("log")
    lrs = np.array([t["params"]["lr"] for t in done], dtype=float)
    ious = np.array([100 * t["value"] for t in done], dtype=float)
    if lrs.size or failed_lr:
        lo, hi = _log_limits(list(lrs) + failed_lr)
        ax.set_xlim(10**lo, 10**hi)
    _draw_gp(ax, lrs, ious)
    _draw_trials(fig, ax, done)
    if failed:
        ax.scatter(failed_lr, [0.03] * len(failed_lr), transform=ax.get_xaxis_transform(), marker="x", s=50,
                   color="crimson", clip_on=False, zorder=4, label=f"failed trial ({len(failed)})")
    chosen = [t for t in done if best_number is not None and t.get("number") == best_number]
    best = chosen[0] if chosen else best_trial(done)
    if best is not None:
        _ring_best(ax, best)
    if not done:
        ax.text(0.5, 0.5, "no completed trial", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.set_xlabel("learning rate of U (log scale)")
    ax.set_ylabel("validation mean IoU (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save(fig, path)


def _draw_gp(ax, lrs: np.ndarray, ious: np.ndarray) -> None:
    """The GP's mean (dashed) and 95 % band over log10(lr), or a note in the plot saying why there is none."""
    if not lrs.size:
        return
    grid = np.logspace(*np.log10(ax.get_xlim()), 200)
    fit = gp_fit(np.log10(lrs), ious, np.log10(grid))
    if isinstance(fit, str):
        ax.text(0.02, 0.97, fit, transform=ax.transAxes, va="top", fontsize=8, color="grey")
        return
    mean, std = fit
    ax.fill_between(grid, mean - 1.96 * std, mean + 1.96 * std, color="tab:blue", alpha=0.15, label="GP 95 % band")
    ax.plot(grid, mean, "--", color="tab:blue", lw=1.5, label="GP mean")


def _draw_trials(fig: Figure, ax, done: Sequence[Mapping[str, Any]]) -> None:
    steps = [t.get("median_steps") for t in done]
    known = [s for s in steps if is_number(s)]
    vmin, vmax = (min(known), max(known)) if known else (0, 1)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    mappable = None
    for random, marker, name in ((True, "o", "random trial"), (False, "s", "GP-sampled trial")):
        group = [t for t in done if bool(t.get("random")) == random]
        if not group:
            continue
        colours = [t["median_steps"] if is_number(t.get("median_steps")) else np.nan for t in group]
        mappable = ax.scatter([t["params"]["lr"] for t in group], [100 * t["value"] for t in group], c=colours,
                              cmap="viridis", vmin=vmin, vmax=vmax, marker=marker, s=42, edgecolors="black",
                              linewidths=0.5, zorder=3, label=name, plotnonfinite=True)
    if mappable is not None and known:
        fig.colorbar(mappable, ax=ax, label="median early-stopping steps")


def _ring_best(ax, best: Mapping[str, Any]) -> None:
    lr, value = best["params"]["lr"], 100 * best["value"]
    ax.scatter([lr], [value], s=220, facecolors="none", edgecolors="red", linewidths=2, zorder=5,
               label=f"best (trial {best.get('number')})")
    steps = best.get("median_steps")
    text = f"lr {lr:.2g}" + (f", {steps} steps" if steps is not None else "") + f"\n{value:.2f} %"
    ax.annotate(text, (lr, value), xytext=(10, -22), textcoords="offset points", fontsize=8, color="red")


# --- FP-k (Fig. 4) ------------------------------------------------------------------------------------------------


def plot_fp_k(summary: Mapping[str, Mapping[str, Any]], title: str, path: Path,
              ks: Sequence[Any] | None = None) -> Path:
    """Fig. 4: mean IoU against the number of training images k (log axis), one line per initialization with
    CI95 error bars; lines are nudged sideways a little so overlapping bars stay visible."""
    columns = [k for k in k_values(summary, ks) if k.isdigit() and int(k) > 0]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.set_xscale("log")
    labels = list(summary)
    for i, label in enumerate(labels):
        points = [(int(k), summary[label][k]) for k in columns if is_number((summary[label].get(k) or {}).get("mean"))]
        if not points:
            continue
        nudge = 10 ** (0.015 * (i - (len(labels) - 1) / 2))
        x = np.array([k for k, _ in points], dtype=float) * nudge
        y = [100 * e["mean"] for _, e in points]
        err = [100 * e["ci95"] if is_number(e.get("ci95")) else 0.0 for _, e in points]
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.5, label=label)
    ticks = [int(k) for k in columns]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(k) for k in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training images per task, k (log scale)")
    ax.set_ylabel("mean IoU on held-out test images (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


# --- Weight distances (Fig. 6/7) ---------------------------------------------------------------------------------

METRICS = {
    "d1": "d1 = ‖v − u‖₂ (Euclidean)",
    "d2": "d2 = ‖v/‖v‖ − u/‖u‖‖₂ (direction)",
    "d3": "d3 = mean |vᵢ − uᵢ| (per parameter)",
}


def network_position(block: str) -> tuple:
    """Sort key putting blocks in network order: stem, encoder blocks by (stage, index), decoder, head."""
    if block == "encoder.stem":
        return (0,)
    if match := re.fullmatch(r"encoder\.block(\d+)\.(\d+)", block):
        return (1, int(match.group(1)), int(match.group(2)))
    if match := re.fullmatch(r"decoder\.rsd(\d+)", block):
        return (2, int(match.group(1)))
    if block.startswith("decoder"):
        return (2, math.inf)
    if block == "head":
        return (3,)
    return (4, block)


def short_block_name(block: str) -> str:
    """Tick labels short enough for ~20 blocks side by side: stem, b0.0, rsd0, head."""
    return block.removeprefix("encoder.").removeprefix("decoder.").replace("block", "b")


def block_order(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    found = dict.fromkeys(b for blocks in summary.values() for b in blocks if b != "network")
    return sorted(found, key=network_position)


def plot_weight_blocks(summary: Mapping[str, Mapping[str, Any]], title: str, path: Path) -> Path:
    """Fig. 6/7: per block (x, network order) the mean d1, d2, d3 with CI95 bars, one line per initialization."""
    blocks = block_order(summary)
    fig = Figure(figsize=(max(8, 0.45 * len(blocks) + 3), 9))
    axes = fig.subplots(3, 1, sharex=True)
    labels = list(summary)
    for ax, (metric, name) in zip(axes, METRICS.items(), strict=True):
        for i, label in enumerate(labels):
            points = [(j, summary[label][b][metric]) for j, b in enumerate(blocks)
                      if is_number(((summary[label].get(b) or {}).get(metric) or {}).get("mean"))]
            if not points:
                continue
            x = np.array([j for j, _ in points], dtype=float) + 0.08 * (i - (len(labels) - 1) / 2)
            err = [e["ci95"] if is_number(e.get("ci95")) else 0.0 for _, e in points]
            ax.errorbar(x, [e["mean"] for _, e in points], yerr=err, marker="o", ms=3, capsize=2, lw=1.2,
                        label=label)
        ax.set_ylabel(metric)
        ax.set_title(name, fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xticks(range(len(blocks)))
    axes[-1].set_xticklabels([short_block_name(b) for b in blocks], rotation=60, ha="right", fontsize=8)
    axes[-1].set_xlabel("block (network order: encoder stem and MBConv blocks, decoder RSD modules, head)")
    fig.suptitle(title)
    return save(fig, path)


def plot_network_distance(summary: Mapping[str, Mapping[str, Any]], title: str, path: Path) -> Path:
    """Whole-network d1 per initialization as bars with CI95: how far U moves each initialization in total."""
    labels = [lab for lab in summary if is_number(((summary[lab].get("network") or {}).get("d1") or {}).get("mean"))]
    means = [summary[lab]["network"]["d1"]["mean"] for lab in labels]
    errs = [summary[lab]["network"]["d1"].get("ci95") or 0.0 for lab in labels]
    fig = Figure(figsize=(max(4.5, 1.2 * len(labels) + 2), 3.6))
    ax = fig.subplots()
    bars = ax.bar(range(len(labels)), means, yerr=errs, capsize=4, color=[f"C{i}" for i in range(len(labels))])
    ax.bar_label(bars, labels=[f"{m:.3g}" for m in means], padding=3, fontsize=8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel("network d1 = ‖θ − θτ‖₂")
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, path)


# --- Training curves ----------------------------------------------------------------------------------------------


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average; the first points average what exists so far, so the curve starts at the data."""
    x = np.asarray(values, dtype=float)
    sums = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, x.size + 1)
    start = np.maximum(idx - window, 0)
    return (sums[idx] - sums[start]) / (idx - start)


def plot_training(metrics: Sequence[Mapping[str, Any]], title: str, path: Path, *, unit: str = "iteration") -> Path:
    """Training loss (raw, faint; smoothed, solid) against iteration; validation mIoU with its CI95 band on a
    second axis when the run validated (meta-train), else the learning rate when it logged one (joint-train)."""
    it = np.array([m["iteration"] for m in metrics], dtype=float)
    loss = np.array([m["loss"] for m in metrics], dtype=float)
    window = max(1, len(loss) // 25)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.plot(it, loss, color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(it, smooth(loss, window), color="tab:blue", lw=1.8)
    ax.set_xlabel(unit)
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color="tab:blue", lw=1.8, label=f"loss (moving mean of {window})")]
    validated = [m for m in metrics if is_number(m.get("val_miou"))]
    other = ax.twinx()
    if validated:
        handles += _draw_validation(other, validated)
    elif any(is_number(m.get("lr")) for m in metrics):
        rows = [m for m in metrics if is_number(m.get("lr"))]
        other.plot([m["iteration"] for m in rows], [m["lr"] for m in rows], "--", color="grey", lw=1)
        other.set_ylabel("learning rate", color="grey")
        handles.append(Line2D([], [], color="grey", ls="--", label="learning rate"))
    else:
        other.set_axis_off()
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(title)
    return save(fig, path)


def _draw_validation(ax, validated: Sequence[Mapping[str, Any]]) -> list[Line2D]:
    x = [m["iteration"] for m in validated]
    y = np.array([100 * m["val_miou"] for m in validated])
    ci = np.array([100 * m["val_ci95"] if is_number(m.get("val_ci95")) else 0.0 for m in validated])
    ax.fill_between(x, y - ci, y + ci, color="tab:orange", alpha=0.2)
    ax.plot(x, y, "o-", color="tab:orange", ms=4, lw=1.5)
    ax.set_ylabel("validation mean IoU (%)", color="tab:orange")
    return [Line2D([], [], color="tab:orange", marker="o", label="validation mIoU ± CI95")]
