"""PNG figures of a segmentation run: label maps overlaid on their images (truth
and prediction), per-class IoU bars for one or several runs, and mIoU against step
read from run logs."""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
import torch

from ..run_log import plot_runs

__all__ = ["class_colours", "draw_segmentations", "plot_class_iou", "plot_miou"]

OVERLAY_ALPHA = 0.5


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_colours(num_classes: int) -> np.ndarray:
    """(num_classes, 3) RGB in [0, 1]: matplotlib's tab10 / tab20 for up to 20
    classes, else hues a golden-ratio step apart (neighbouring indices far apart)
    at alternating lightness."""
    plt = _pyplot()
    if num_classes <= 20:
        cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
        return np.array([cmap(i)[:3] for i in range(num_classes)])
    return np.array([colorsys.hls_to_rgb((i * 0.618033988749895) % 1, 0.45 + 0.15 * (i % 2),
                                         0.85) for i in range(num_classes)])


def _as_rgb(image: torch.Tensor, size) -> np.ndarray:
    """(H, W, 3) in [0, 1]: the first three bands (one band as grey), resized
    bilinearly to the label map's ``size`` when it differs (evaluation images may
    be scaled while their masks are not)."""
    image = torch.as_tensor(image).detach().cpu().float()
    if image.dim() != 3:
        raise ValueError(f"draw_segmentations: images must be (C, H, W), got shape "
                         f"{tuple(image.shape)}")
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    if tuple(image.shape[-2:]) != tuple(size):
        image = torch.nn.functional.interpolate(image[None], size=tuple(size), mode="bilinear",
                                                align_corners=False)[0]
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def _labels(name: str, value, index: int, num_classes: int, ignore_index: int) -> np.ndarray:
    labels = torch.as_tensor(value).detach().cpu()
    if labels.dim() != 2 or labels.is_floating_point():
        raise ValueError(f"draw_segmentations: {name}[{index}] must be an (H, W) integer "
                         f"label map, got {labels.dtype} of shape {tuple(labels.shape)}")
    labels = labels.long().numpy()
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(f"draw_segmentations: {name}[{index}] holds the value "
                         f"{labels[bad][0]}, not a class in [0, {num_classes}) nor the ignore "
                         f"index {ignore_index}")
    return labels


def _overlay(rgb: np.ndarray, labels: np.ndarray, colours: np.ndarray, ignore_index: int):
    out = rgb.copy()
    shown = labels != ignore_index  # ignored pixels show the image alone
    out[shown] = (1 - OVERLAY_ALPHA) * rgb[shown] + OVERLAY_ALPHA * colours[labels[shown]]
    return out


def draw_segmentations(images, preds, targets, classes, path: str | Path,
                       ignore_index: int = 255) -> Path:
    """A PNG with one column per image and three rows: the image, the true label map
    over it, the predicted one over it, and a legend of the colours of the classes
    that occur. ``images``: (C, H, W) floats in [0, 1] (the first three bands are
    shown; one band as grey); ``preds`` and ``targets``: (H, W) integer maps of the
    same size (an image of another size is resized to it). Pixels at
    ``ignore_index`` are drawn without colour."""
    if not (len(images) == len(preds) == len(targets)) or len(images) == 0:
        raise ValueError(f"draw_segmentations: images, preds and targets must be non-empty "
                         f"and as many, got {len(images)}, {len(preds)}, {len(targets)}")
    if not classes:
        raise ValueError("draw_segmentations: classes must name at least one class")
    n = len(classes)
    rows = []
    for i, (image, pred, target) in enumerate(zip(images, preds, targets)):
        pred = _labels("preds", pred, i, n, ignore_index)
        target = _labels("targets", target, i, n, ignore_index)
        if pred.shape != target.shape:
            raise ValueError(f"draw_segmentations: preds[{i}] is {pred.shape} but targets[{i}] "
                             f"is {target.shape}: they must be the same size")
        rows.append((_as_rgb(image, target.shape), target, pred))
    colours = class_colours(n)
    plt = _pyplot()
    from matplotlib.patches import Patch

    cols = len(rows)
    fig, axes = plt.subplots(3, cols, figsize=(2.4 * cols, 2.4 * 3 + 0.8), dpi=100,
                             squeeze=False)
    for j, (rgb, target, pred) in enumerate(rows):
        for ax, picture, name in zip(axes[:, j], (rgb, _overlay(rgb, target, colours, ignore_index),
                                                  _overlay(rgb, pred, colours, ignore_index)),
                                     ("image", "truth", "prediction")):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
    present = sorted(set().union(*(np.unique(t[t != ignore_index]).tolist() +
                                   np.unique(p[p != ignore_index]).tolist()
                                   for _, t, p in rows)))
    handles = [Patch(color=colours[c], label=classes[c]) for c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), max(1, 2 * cols)),
                   fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.98, bottom=0.8 / (2.4 * 3 + 0.8) + 0.04,
                        wspace=0.05, hspace=0.05)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_class_iou(results, classes, path: str | Path, title: str | None = None) -> Path:
    """Per-class IoU bars, runs side by side: ``results`` maps a run's name to its
    per-class IoUs (``compute()["iou"]``, fractions in [0, 1]), or is one such list.
    A NaN (the class occurs in neither truth nor prediction) draws no bar and is
    marked "absent"; the legend gives each run's mIoU (mean over the others)."""
    if not isinstance(results, dict):
        results = {"": results}
    if not results or not classes:
        raise ValueError("plot_class_iou: results and classes must not be empty")
    runs = {}
    for name, values in results.items():
        values = np.asarray(torch.as_tensor(values, dtype=torch.float64).cpu())
        if values.shape != (len(classes),):
            raise ValueError(f"plot_class_iou: run {name!r} has {values.size} IoU value(s) for "
                             f"{len(classes)} classes")
        bad = ~np.isnan(values) & ((values < 0) | (values > 1))
        if bad.any():
            raise ValueError(f"plot_class_iou: run {name!r} has the IoU {values[bad][0]} for "
                             f"class {classes[int(np.argmax(bad))]!r}; IoUs are in [0, 1] or NaN")
        runs[name] = values
    plt = _pyplot()
    n, k = len(classes), len(runs)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * n * max(1, k / 2) + 1.5), 4), dpi=120)
    x = np.arange(n)
    for r, (name, values) in enumerate(runs.items()):
        offset = (r - (k - 1) / 2) * width
        finite = ~np.isnan(values)
        miou = np.nanmean(values) * 100 if finite.any() else math.nan
        label = f"{name} (mIoU {miou:.1f})" if name else f"mIoU {miou:.1f}"
        ax.bar(x[finite] + offset, values[finite] * 100, width, label=label)
        for c in np.flatnonzero(~finite):
            ax.text(x[c] + offset, 1, "absent", rotation=90, ha="center", va="bottom",
                    fontsize=6, color="grey")
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center",
                       fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title or "per-class IoU")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_miou(runs: dict[str, str | Path], path: str | Path, title: str = "") -> Path:
    """mIoU against step, one line per run: ``runs`` maps a label to a run folder (or
    its log.jsonl) whose evaluation records carry ``miou`` (``lomar segment`` logs it
    in percent, as detection logs AP)."""
    return plot_runs(runs, path, key="miou", x="step", title=title or "validation mIoU",
                     ylabel="mIoU (%)")
