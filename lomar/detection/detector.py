"""torchvision's Mask R-CNN / Faster R-CNN around a ViTDet backbone, at a fixed
square input size."""

from __future__ import annotations

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD

DETECTORS = ("mask_rcnn", "faster_rcnn")
ROI_LEVELS = ["0", "1", "2", "3"]  # the RoI heads pool strides 4-32; the RPN also sees "pool"


class SquareTransform(GeneralizedRCNNTransform):
    """The detector's input transform at a fixed square size (ViTDet's): normalises
    with the pretraining statistics; in training takes the images as the dataset's
    scale jitter made them (at most ``input_size`` a side), at evaluation resizes
    each so that its long side is ``input_size``; pads the batch to ``input_size``
    x ``input_size`` at the bottom and right. One padded size means one patch grid:
    the global blocks' bucket map is built once."""

    def __init__(self, input_size: int):
        super().__init__(input_size, input_size, list(IMAGENET_MEAN), list(IMAGENET_STD),
                         size_divisible=input_size)
        self.input_size = input_size

    def resize(self, image, target=None):
        if not self.training:
            return super().resize(image, target)
        h, w = image.shape[-2:]
        if max(h, w) > self.input_size:
            raise ValueError(f"training images must be at most input_size {self.input_size} a "
                             f"side (the dataset crops them), got {h}x{w}")
        return image, target


def build_detector(backbone: nn.Module, num_classes: int, kind: str = "mask_rcnn",
                   input_size: int = 1024, anchor_sizes=(32, 64, 128, 256, 512),
                   box_head_dim: int = 1024, mask_head_dims=(256, 256, 256, 256),
                   rpn_batch_size_per_image: int = 256, box_batch_size_per_image: int = 512,
                   detections_per_image: int = 100, rpn_proposals=(2000, 1000)) -> nn.Module:
    """A torchvision detector for ``num_classes`` object classes (background added).

    ``backbone``: a :class:`lomar.models.ViTDetBackbone` (any module returning the
    "0"-"3" + "pool" maps with ``out_channels``). ``anchor_sizes``: one size per
    pyramid level (5 with "pool"), aspect ratios 0.5, 1, 2. The heads are
    torchvision's (two-layer MLP box head, four-conv mask head), their widths given
    by ``box_head_dim`` and ``mask_head_dims``. ``rpn_proposals``: (training,
    evaluation) proposals kept per level before NMS and per image after it."""
    if kind not in DETECTORS:
        raise ValueError(f"kind must be one of {DETECTORS}, got {kind!r}")
    levels = len(ROI_LEVELS) + (1 if getattr(backbone.pyramid, "top_pool", True) else 0)
    if len(anchor_sizes) != levels:
        raise ValueError(f"anchor_sizes must give one size per pyramid level ({levels}), got "
                         f"{list(anchor_sizes)}")
    channels = backbone.out_channels
    kwargs = dict(
        rpn_anchor_generator=AnchorGenerator(tuple((int(s),) for s in anchor_sizes),
                                             ((0.5, 1.0, 2.0),) * levels),
        box_roi_pool=MultiScaleRoIAlign(ROI_LEVELS, 7, 2),
        box_head=TwoMLPHead(channels * 7 * 7, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1),
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=detections_per_image,
        rpn_pre_nms_top_n_train=rpn_proposals[0], rpn_post_nms_top_n_train=rpn_proposals[0],
        rpn_pre_nms_top_n_test=rpn_proposals[1], rpn_post_nms_top_n_test=rpn_proposals[1],
        min_size=input_size, max_size=input_size,
    )
    if kind == "mask_rcnn":
        dims = tuple(mask_head_dims)
        model = MaskRCNN(backbone, None, mask_roi_pool=MultiScaleRoIAlign(ROI_LEVELS, 14, 2),
                         mask_head=MaskRCNNHeads(channels, dims, 1),
                         mask_predictor=MaskRCNNPredictor(dims[-1], dims[-1], num_classes + 1),
                         **kwargs)
    else:
        model = FasterRCNN(backbone, None, **kwargs)
    model.transform = SquareTransform(input_size)
    return model
