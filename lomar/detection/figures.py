"""PNG figures of a detection run: AP against step for one or several runs, and a
detector's predictions drawn on validation images."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..run_log import finish_figure, read_log

PANELS = (("box_ap", "box AP"), ("mask_ap", "mask AP"))


def plot_ap(runs: dict[str, str | Path], png_path: str | Path, title: str = "") -> Path:
    """Box AP and (when logged) mask AP against step, one line per run; ``runs`` maps a
    label to a run folder (or its log.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for label, path in runs.items():
        path = Path(path)
        records = read_log(path / "log.jsonl" if path.is_dir() else path)
        curves[label] = {key: [(r["step"], r[key]) for r in records
                               if key in r and math.isfinite(r[key])] for key, _ in PANELS}
        if not curves[label]["box_ap"]:
            raise ValueError(f"plot_ap: no box_ap values in {path}")
    panels = [(k, name) for k, name in PANELS if any(c[k] for c in curves.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=120,
                             squeeze=False)
    for ax, (key, name) in zip(axes[0], panels):
        for label, curve in curves.items():
            if curve[key]:
                steps, values = zip(*curve[key])
                ax.plot(steps, values, marker="o", markersize=3, linewidth=1.5,
                        label=f"{label} (last {values[-1]:.1f})")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(f"{title}: {name}" if title else name)
    return finish_figure(fig, axes[0], png_path)


@torch.no_grad()
def draw_predictions(model, dataset, png_path: str | Path, count: int = 4,
                     score_threshold: float = 0.5, device="cpu") -> Path:
    """The first ``count`` images of ``dataset`` (a CocoDetection in evaluation mode)
    side by side with the detector's boxes, class names, scores and masks above
    ``score_threshold``."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

    was_training = model.training
    model.eval()
    panels = []
    for index in range(min(count, len(dataset))):
        image, _ = dataset[index]
        pred = model([image.to(device)])[0]
        keep = pred["scores"].cpu() >= score_threshold
        # small images are enlarged (nearest) so that the labels stay readable
        zoom = max(1, 384 // max(image.shape[-2:]))
        canvas = (image * 255).round().to(torch.uint8).repeat_interleave(zoom, 1) \
            .repeat_interleave(zoom, 2)
        if "masks" in pred and keep.any():
            masks = pred["masks"][keep.to(pred["masks"].device)][:, 0].cpu() > 0.5
            masks = masks.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
            canvas = draw_segmentation_masks(canvas, masks, alpha=0.45)
        labels = [f"{dataset.categories[int(c) - 1]} {float(s):.2f}"
                  for c, s in zip(pred["labels"].cpu()[keep], pred["scores"].cpu()[keep])]
        if labels:
            canvas = draw_bounding_boxes(canvas, pred["boxes"].float().cpu()[keep] * zoom,
                                         labels=labels, colors="yellow",
                                         width=max(1, canvas.shape[-1] // 200))
        panels.append(canvas)
    model.train(was_training)
    side = max(max(p.shape[-2:]) for p in panels)
    padded = [torch.nn.functional.pad(p, (0, side - p.shape[-1], 0, side - p.shape[-2]))
              for p in panels]
    grid = make_grid(padded, nrow=len(padded), padding=4, pad_value=255)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(png_path)
    return png_path
