"""The offline synthetic segmentation set: layout, labels, determinism, reuse."""

import numpy as np
import pytest
from PIL import Image

from lomar.segmentation import DEMO_CLASSES, SegmentationFolder, build_demo_segmentation

SMALL = {"num_train": 12, "num_val": 4, "size": 64}


def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_layout_labels_and_folder(tmp_path):
    root = build_demo_segmentation(tmp_path / "demo", **SMALL)
    assert (root / "classes.txt").read_text().split() == list(DEMO_CLASSES)
    for split, count in (("training", 12), ("validation", 4)):
        assert len(list((root / "images" / split).glob("*.png"))) == count
        assert len(list((root / "annotations" / split).glob("*.png"))) == count
    raw = np.stack([np.asarray(Image.open(p))
                    for p in sorted((root / "annotations/training").glob("*.png"))])
    assert raw.dtype == np.uint8 and raw.shape == (12, 64, 64)
    values, counts = np.unique(raw, return_counts=True)
    # 0: the unlabelled band (ignored), 1: background, 2-5: the four shapes, all present
    assert values.tolist() == [0, 1, 2, 3, 4, 5]
    assert counts[0] < counts[1:].sum() * 0.1 and counts[1] > counts[2:].sum()
    # the band is around shapes: every unlabelled pixel is within two pixels of a
    # shape pixel (one, unless a later shape's band covered the pixels it touched)
    shape = np.pad(raw >= 2, ((0, 0), (2, 2), (2, 2)))
    near = np.zeros_like(raw, dtype=bool)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            near |= shape[:, 2 + dy:66 + dy, 2 + dx:66 + dx]
    assert near[raw == 0].all()

    ds = SegmentationFolder(root, train=False, crop_size=64)
    assert ds.classes == list(DEMO_CLASSES) and ds.num_classes == 5 and len(ds) == 12
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and set(mask.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    val = SegmentationFolder(root, "images/validation", "annotations/validation",
                             crop_size=32)
    assert len(val) == 4 and val[0][0].shape == (3, 32, 32)


def test_deterministic_and_reused(tmp_path):
    a = build_demo_segmentation(tmp_path / "a", **SMALL, seed=3)
    b = build_demo_segmentation(tmp_path / "b", **SMALL, seed=3)
    assert files(a) == files(b)
    for name in files(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    stamp_time = (a / "images/training/scene_00000.png").stat().st_mtime_ns
    build_demo_segmentation(a, **SMALL, seed=3)  # complete with the same arguments: reused
    assert (a / "images/training/scene_00000.png").stat().st_mtime_ns == stamp_time
    c = build_demo_segmentation(tmp_path / "c", **SMALL, seed=4)
    assert (c / "images/training/scene_00000.png").read_bytes() != \
        (a / "images/training/scene_00000.png").read_bytes()


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="size >= 32"):
        build_demo_segmentation(tmp_path, size=16)
    with pytest.raises(ValueError, match="num_val >= 1"):
        build_demo_segmentation(tmp_path, num_val=0)
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_a_smaller_rebuild_keeps_no_stale_scenes(tmp_path):
    """Built again with fewer scenes, the set has exactly the new count (pairs are matched
    by name, so a stale scene would silently join the data)."""
    build_demo_segmentation(tmp_path, num_train=6, num_val=4, size=32)
    build_demo_segmentation(tmp_path, num_train=3, num_val=2, size=32)
    for folder, count in (("images/training", 3), ("annotations/training", 3),
                          ("images/validation", 2), ("annotations/validation", 2)):
        assert len(list((tmp_path / folder).glob("*.png"))) == count
