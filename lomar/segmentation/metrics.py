"""Semantic segmentation metrics from one confusion matrix accumulated over the
whole evaluation set: mIoU, per-class IoU, pixel accuracy and mean class accuracy,
as mmsegmentation's IoUMetric computes them.

The matrix counts pixels (rows: true class, columns: predicted class), so scores
are ratios of totals over the whole set, not averages of per-image or per-batch
scores (those weight a small image like a large one and differ). Under DDP each
process counts its share and :meth:`SegmentationMetrics.all_reduce` sums the
matrices, which gives exactly the one-process matrix."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["SegmentationMetrics"]


class SegmentationMetrics:
    """Accumulates ``num_classes`` x ``num_classes`` pixel counts (``confusion``,
    int64 on the CPU; rows = target, columns = prediction) over :meth:`update` calls.

    Pixels whose target is ``ignore_index`` are not counted. A class present in
    neither targets nor predictions has IoU NaN and is left out of the means
    (``miou`` is the mean over classes that occur in either; ``mean_accuracy`` over
    classes that occur in the targets)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if not isinstance(ignore_index, int) or 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index must be an int outside [0, {num_classes}) (a class "
                             f"index cannot be ignored), got {ignore_index!r}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of integer label maps ``pred`` and ``target`` (the same
        shape, any leading dimensions, any device). A target value that is neither a
        class nor ``ignore_index``, or a prediction outside the classes at a counted
        pixel, raises ValueError naming it (before anything is counted)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer label map, got dtype {t.dtype}")
        n = self.num_classes
        target, pred = target.reshape(-1).long(), pred.reshape(-1).long()
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        for name, t, allowed in (("target", target, f"a class in [0, {n}) or the ignore "
                                  f"index {self.ignore_index}"),
                                 ("pred", pred, f"a class in [0, {n})")):
            bad = (t < 0) | (t >= n)
            if bool(bad.any()):
                raise ValueError(f"{name} holds the value {int(t[bad][0])} at a counted pixel; "
                                 f"allowed: {allowed}")
        counts = torch.bincount(target * n + pred, minlength=n * n)
        self.confusion += counts.reshape(n, n).cpu()

    def all_reduce(self) -> None:
        """Sum the matrix over the processes of torch.distributed (nothing without an
        initialised process group). Every process must call it. The sum travels on
        the backend's device (CUDA for NCCL) and comes back to the CPU."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        total = self.confusion.to(device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        self.confusion = total.cpu()

    def compute(self) -> dict:
        """``miou``, ``pixel_accuracy`` and ``mean_accuracy`` (floats in [0, 1]; NaN
        when nothing was counted) and ``iou``, ``accuracy`` (per class, lists of
        floats, NaN where undefined)."""
        cm = self.confusion.to(torch.float64)
        correct = cm.diagonal()
        in_target, in_pred = cm.sum(dim=1), cm.sum(dim=0)
        union = in_target + in_pred - correct
        iou = correct / union  # 0/0 = NaN: the class is in neither
        accuracy = correct / in_target  # NaN: the class is not in the targets
        total = cm.sum()
        return {"miou": float(iou.nanmean()),
                "iou": iou.tolist(),
                "pixel_accuracy": float(correct.sum() / total),
                "mean_accuracy": float(accuracy.nanmean()),
                "accuracy": accuracy.tolist()}
