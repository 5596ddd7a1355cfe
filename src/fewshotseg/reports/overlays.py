"""Prediction overlays (paper Fig. 2/5): query images with the predicted mask in red and the true outline.

`evaluate` keeps the first query image of a few episodes per shot count in `predictions.npz`; a grid of them shows
what a mean IoU number looks like, and where an initialization fails (missed parts, spill onto background).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fewshotseg.reports.plots import save

PREDICTION_RGBA = (1.0, 0.0, 0.0, 0.45)
OUTLINE_COLOUR = "#00e5ff"  # cyan: distinct from the red prediction on any photo
MAX_PER_SHOT = 8


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a predictions.npz, checked for what a grid needs; ValueError says what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # truncated, not a zip, ...
        raise ValueError(f"{path.name}: unreadable ({type(err).__name__}: {err})") from err
    missing = [k for k in ("shots", "images", "masks", "probs") if k not in arrays]
    if missing:
        raise ValueError(f"{path.name}: missing array(s) {', '.join(missing)}")
    images = arrays["images"]
    if images.ndim == 4 and images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.transpose(0, 3, 1, 2)  # channels-last, as some tools write images
    n = len(arrays["shots"])
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{path.name}: images have shape {images.shape}, expected (n, 3, H, W)")
    size = images.shape[2:]
    for key in ("masks", "probs"):
        if arrays[key].shape != (n, *size):
            raise ValueError(f"{path.name}: {key} have shape {arrays[key].shape}, expected {(n, *size)}")
    if images.shape[0] != n:
        raise ValueError(f"{path.name}: {images.shape[0]} images for {n} shot counts")
    if n == 0:
        raise ValueError(f"{path.name}: holds no images")
    return {"shots": arrays["shots"], "images": images, "masks": arrays["masks"], "probs": arrays["probs"]}


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU of one image; 1 when both are empty, as the package's metrics count it."""
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def plot_overlays(predictions: dict[str, np.ndarray], title: str, path: Path, *,
                  max_per_shot: int = MAX_PER_SHOT) -> Path:
    """One row per shot count, up to `max_per_shot` query images each, every panel titled with its IoU."""
    shots = sorted({int(s) for s in predictions["shots"]})
    rows = [np.flatnonzero(predictions["shots"] == s)[:max_per_shot] for s in shots]
    columns = max(len(r) for r in rows)
    fig = Figure(figsize=(1.9 * columns + 0.6, 2.1 * len(rows) + 0.9))
    axes = np.atleast_2d(fig.subplots(len(rows), columns, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (shot, indices) in enumerate(zip(shots, rows, strict=True)):
        for c, i in enumerate(indices):
            _panel(axes[r, c], predictions["images"][i], predictions["masks"][i] > 0.5, predictions["probs"][i] > 0.5)
        axes[r, 0].set_axis_on()
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_ylabel(f"{shot}-shot", fontsize=11)
    fig.suptitle(title)
    fig.legend(handles=[Patch(color=PREDICTION_RGBA, label="prediction (p > 0.5)"),
                        Line2D([], [], color=OUTLINE_COLOUR, lw=2, label="ground-truth outline")],
               loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.subplots_adjust(bottom=0.12)
    return save(fig, path)


def _panel(ax, image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> None:
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.imshow(np.clip(np.moveaxis(image, 0, -1), 0.0, 1.0), interpolation="nearest")
    overlay = np.zeros((*predicted.shape, 4))
    overlay[predicted] = PREDICTION_RGBA
    ax.imshow(overlay, interpolation="nearest")
    if truth.any() and not truth.all():  # a constant mask has no outline (and contour would warn)
        ax.contour(truth.astype(float), levels=[0.5], colors=[OUTLINE_COLOUR], linewidths=1.5)
    ax.set_title(f"IoU {100 * iou(predicted, truth):.1f} %", fontsize=9)
