"""The segmentation figures: PNGs written at their size, bad inputs refused."""

import math

import pytest
import torch
from PIL import Image

from lomar.run_log import RunLog
from lomar.segmentation.figures import (class_colours, draw_segmentations, plot_class_iou,
                                        plot_miou)

CLASSES = ["background", "disc", "square", "triangle"]


def maps(shape, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, shape, generator=g)
    target[:2] = 255
    return torch.randint(0, 4, shape, generator=g), target


def test_draw_segmentations(tmp_path):
    p0, t0 = maps((40, 56), 0)
    p1, t1 = maps((30, 30), 1)
    p2, t2 = maps((24, 24), 2)
    images = [torch.rand(3, 40, 56), torch.rand(1, 30, 30),
              torch.rand(4, 48, 48)]  # one band as grey, four bands' first three, rescaled
    path = draw_segmentations(images, [p0, p1, p2], [t0, t1, t2], CLASSES,
                              tmp_path / "sub" / "seg.png")
    with Image.open(path) as png:
        assert png.size == (round(2.4 * 3 * 100), round((2.4 * 3 + 0.8) * 100))


def test_draw_segmentations_refuses_bad_inputs(tmp_path):
    pred, target = maps((20, 20), 0)
    image = torch.rand(3, 20, 20)
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match="as many"):
        draw_segmentations([image], [pred, pred], [target], CLASSES, out)
    with pytest.raises(ValueError, match=r"preds\[0\] holds the value 7"):
        draw_segmentations([image], [pred.masked_fill(pred == 3, 7)], [target], CLASSES, out)
    with pytest.raises(ValueError, match=r"targets\[0\] must be an \(H, W\) integer"):
        draw_segmentations([image], [pred], [target.float()], CLASSES, out)
    with pytest.raises(ValueError, match="same size"):
        draw_segmentations([image], [pred[:10]], [target], CLASSES, out)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        draw_segmentations([image[0]], [pred], [target], CLASSES, out)
    assert not out.exists()


def test_plot_class_iou(tmp_path):
    runs = {"pretrained": [0.9, 0.5, math.nan, 0.25], "random init": [0.8, 0.2, math.nan, 0.0]}
    path = plot_class_iou(runs, CLASSES, tmp_path / "iou.png", title="demo")
    with Image.open(path) as png:
        assert png.size == (720, 480)  # figsize (6, 4) at 120 dpi: few classes
    many = [f"c{i}" for i in range(40)]
    path = plot_class_iou(torch.linspace(0, 1, 40), many, tmp_path / "many.png")
    with Image.open(path) as png:
        assert png.size[0] == round((0.35 * 40 + 1.5) * 120)
    with pytest.raises(ValueError, match="3 IoU value"):
        plot_class_iou({"a": [0.1, 0.2, 0.3]}, CLASSES, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="IoU 1.5 for class 'disc'"):
        plot_class_iou([0.1, 1.5, 0.2, 0.3], CLASSES, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_miou(tmp_path):
    for name, scale in (("pretrained", 1.0), ("random", 0.5)):
        log = RunLog(tmp_path / name, tensorboard=False)
        for step in range(0, 50, 10):
            log.log(step, loss=1.0)
            log.log(step, miou=scale * step / 50)
        log.close()
    path = plot_miou({"pretrained": tmp_path / "pretrained", "random": tmp_path / "random"},
                     tmp_path / "miou.png", title="demo")
    with Image.open(path) as png:
        assert png.size == (720, 480)
    empty = RunLog(tmp_path / "empty", tensorboard=False)
    empty.log(0, loss=1.0)
    empty.close()
    with pytest.raises(ValueError, match="no 'miou' values"):
        plot_miou({"empty": tmp_path / "empty"}, tmp_path / "none.png")


def test_class_colours_are_distinct():
    for n in (4, 15, 150):
        colours = class_colours(n)
        assert colours.shape == (n, 3) and ((colours >= 0) & (colours <= 1)).all()
        assert len({tuple(c.round(3)) for c in colours}) == n
