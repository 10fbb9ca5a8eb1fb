"""COCO AP of a detector's predictions (pycocotools' COCOeval): box AP and, for
Mask R-CNN, mask AP, as percentages (AP at IoU 0.50:0.95, AP50, AP75, and AP of
small, medium and large objects)."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch

STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def coco_results(predictions: list[dict], image_ids: list[int],
                 category_ids: list[int]) -> list[dict]:
    """COCO result records from torchvision's outputs (boxes in the original image's
    pixels, labels 1..C, scores, and masks (N, 1, H, W) of probabilities when
    present): boxes as x, y, w, h; masks thresholded at 0.5 and run-length encoded."""
    from pycocotools import mask as mask_utils

    records = []
    for pred, image_id in zip(predictions, image_ids):
        boxes = pred["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        labels, scores = pred["labels"].tolist(), pred["scores"].float().tolist()
        rles = [None] * len(labels)
        if "masks" in pred and len(labels):
            binary = (pred["masks"][:, 0] > 0.5).to(torch.uint8).cpu().numpy()
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for box, label, score, rle in zip(xywh, labels, scores, rles):
            record = {"image_id": int(image_id), "category_id": category_ids[label - 1],
                      "bbox": [round(v, 3) for v in box], "score": round(score, 5)}
            if rle is not None:
                record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            records.append(record)
    return records


def coco_ap(coco_gt, results: list[dict], iou_type: str, image_ids: list[int]) -> dict:
    """{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"} in percent for
    ``iou_type`` "bbox" or "segm" over ``image_ids``; all 0 without any result (an
    untrained detector may keep no box above the score threshold)."""
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if iou_type == "segm":
        results = [r for r in results if "segmentation" in r]
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval reports -1 where a size range has no ground truth: not a score.
    return {name: float(v) * 100 if v >= 0 else math.nan
            for name, v in zip(STAT_NAMES, evaluator.stats)}
