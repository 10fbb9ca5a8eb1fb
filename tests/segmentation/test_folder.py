"""SegmentationFolder and the segmentation transforms: label values (reduce_zero_label,
class maps, class names), items for training and evaluation, image and mask moving
together, mmseg's crop rule, photometric distortion, reproducible draws, and the
problems found at construction."""

import colorsys
import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lomar.engine.seeding import SeededItems
from lomar.segmentation import (ADE20K_CLASSES, SegmentationFolder, collate, read_label_map,
                                val_collate)
from lomar.segmentation.transforms import (TrainTransform, _hsv_to_rgb, _rgb_to_hsv,
                                           photometric_distortion, random_crop)

IGNORE = 255


def write_pairs(root, count=3, size=(40, 56), num_labels=5, seed=0, image_ext=".jpg"):
    """count random (RGB image, uint8 label map with values 0..num_labels) pairs."""
    rng = np.random.default_rng(seed)
    (root / "images/training").mkdir(parents=True)
    (root / "annotations/training").mkdir(parents=True)
    labels = []
    for i in range(count):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        label = rng.integers(0, num_labels + 1, size, dtype=np.uint8)
        Image.fromarray(image).save(root / f"images/training/p{i}{image_ext}")
        Image.fromarray(label).save(root / f"annotations/training/p{i}.png")
        labels.append(label)
    return labels


def test_reduce_zero_label_and_eval_items(tmp_path):
    labels = write_pairs(tmp_path, image_ext=".png")
    ds = SegmentationFolder(tmp_path, train=False, eval_resize=False)
    assert ds.num_classes == 5 and ds.classes == [f"class_{i}" for i in range(5)]
    assert [p.name for p, _ in ds.pairs] == ["p0.png", "p1.png", "p2.png"]
    image, mask = ds[1]
    expected = torch.from_numpy(labels[1]).long() - 1
    expected[expected < 0] = IGNORE  # 0 ("other") is ignored, v is class v - 1
    assert torch.equal(mask, expected) and mask.dtype == torch.int64
    pixels = np.array(Image.open(ds.pairs[1][0]))
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    images, masks = val_collate([ds[0], ds[1]])
    assert isinstance(images, list) and len(masks) == 2

    # mmseg's test resize: the image fits (4 S, S), the mask keeps its size
    resized, mask = SegmentationFolder(tmp_path, train=False, crop_size=20)[0]
    assert resized.shape == (3, 20, 28) and mask.shape == (40, 56)


def test_train_items_padding_and_collate(tmp_path):
    write_pairs(tmp_path, size=(30, 40))
    ds = SegmentationFolder(tmp_path, crop_size=48, scale_range=(0.5, 0.5))
    image, mask = ds[0]  # 24 x 32 after the resize, padded to 48 x 48
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    assert image.dtype == torch.float32 and mask.dtype == torch.int64
    assert (image[:, 24:] == 0).all() and (image[:, :, 32:] == 0).all()
    assert (mask[24:] == IGNORE).all() and (mask[:, 32:] == IGNORE).all()
    assert set(mask[:24, :32].unique().tolist()) <= set(range(5)) | {IGNORE}
    images, masks = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 48, 48) and masks.shape == (3, 48, 48)


def test_image_and_mask_move_together(tmp_path):
    """The image's first band encodes the label; after crops, flips and resizes the
    item's two must still agree."""
    rng = np.random.default_rng(3)
    blocks = rng.integers(1, 6, (6, 8)).astype(np.uint8)
    label = np.kron(blocks, np.ones((8, 8), np.uint8))  # 48 x 64, 8-pixel blocks
    image = np.stack([label * 40, np.zeros_like(label), np.full_like(label, 9)], axis=2)
    (tmp_path / "images/training").mkdir(parents=True)
    (tmp_path / "annotations/training").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "images/training/a.png")
    Image.fromarray(label).save(tmp_path / "annotations/training/a.png")
    # scale 1: crops and flips only, exact agreement
    ds = SegmentationFolder(tmp_path, crop_size=48, scale_range=(1, 1), hflip=0.5,
                            photometric=False)
    flipped = set()
    for seed in range(6):
        torch.manual_seed(seed)
        img, mask = ds[0]
        assert torch.equal(mask, (img[0] * 255 / 40).round().long() - 1)
        flipped.add(bool(mask[0, 0] != int(blocks[0, 0]) - 1))
    assert flipped == {True, False}  # both flipped and unflipped crops were drawn
    # scale 2: bilinear image, nearest mask: they agree away from the block edges
    ds = SegmentationFolder(tmp_path, crop_size=48, scale_range=(2, 2), photometric=False)
    torch.manual_seed(0)
    img, mask = ds[0]
    agree = (mask == (img[0] * 255 / 40).round().long() - 1).float().mean()
    assert agree > 0.85


def test_random_crop_keeps_a_class_under_cat_max_ratio():
    mask = torch.zeros(100, 100, dtype=torch.long)
    mask[:60, :60] = 1
    mask[90:, 90:] = IGNORE
    image = torch.rand(3, 100, 100)

    def share(cat_max_ratio):
        ok = 0
        for seed in range(20):
            torch.manual_seed(seed)
            img, crop = random_crop(image, mask, 40, IGNORE, cat_max_ratio)
            assert img.shape == (3, 40, 40) and crop.shape == (40, 40)
            counts = torch.bincount(crop[crop != IGNORE].flatten(), minlength=2)
            ok += int((counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75)
        return ok

    assert share(0.75) >= 18 and share(1.0) <= 14
    one_class = torch.zeros(50, 50, dtype=torch.long)
    assert random_crop(image, one_class, 40, IGNORE)[1].shape == (40, 40)  # gives up after 10


def test_photometric_distortion():
    x = torch.rand(3, 20, 30)
    torch.testing.assert_close(_hsv_to_rgb(_rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    hsv = _rgb_to_hsv(x)
    for y, c in ((3, 4), (10, 29)):
        assert hsv[:, y, c].tolist() == pytest.approx(colorsys.rgb_to_hsv(*x[:, y, c].tolist()),
                                                      abs=1e-5)
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out = photometric_distortion(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        changed += not torch.equal(out, x)
    assert changed >= 6
    # one band: brightness and contrast only, so the order of the values is kept
    grey = torch.rand(1, 20, 30)
    for seed in range(8):
        torch.manual_seed(seed)
        out = photometric_distortion(grey)
        order = grey.flatten().argsort()
        assert (out.flatten()[order].diff() >= 0).all()


def test_draws_are_reproducible_per_seed(tmp_path):
    write_pairs(tmp_path, size=(60, 80))
    ds = SegmentationFolder(tmp_path, crop_size=32)
    seeded = SeededItems(ds, seed=7)
    a, b = seeded[(1, 2)], seeded[(1, 2)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = seeded[(2, 2)]
    assert not torch.equal(a[0], c[0])


def test_bands_and_bit_depth(tmp_path):
    """A 4-band uint16 TIFF with 16-bit labels and a class map."""
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    image = rng.integers(0, 65536, (4, 36, 44), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "img/s.tif", image, photometric="minisblack",
                     planarconfig="separate")
    raw = rng.choice(np.array([0, 1000, 2000, 2001], np.uint16), size=(36, 44))
    tifffile.imwrite(tmp_path / "lab/s.tif", raw)
    mapping = tmp_path / "classes.yaml"
    mapping.write_text("0: null\n1000: forest\n2000: water\n2001: water\n")
    ds = SegmentationFolder(tmp_path, "img", "lab", train=False, eval_resize=False,
                            reduce_zero_label=False, class_map=mapping)
    assert ds.classes == ["forest", "water"] and ds.num_classes == 2
    img, mask = ds[0]
    torch.testing.assert_close(img, torch.from_numpy(image.astype(np.float32)) / 65535)
    expected = np.select([raw == 1000, raw >= 2000], [0, 1], IGNORE)
    assert torch.equal(mask, torch.from_numpy(expected).long())
    train = SegmentationFolder(tmp_path, "img", "lab", crop_size=24, reduce_zero_label=False,
                               class_map=mapping, mean=[0.5] * 4, std=[0.25] * 4)
    img, mask = train[0]
    assert img.shape == (4, 24, 24) and img.min() >= -2 and img.max() <= 2


def test_class_names(tmp_path):
    write_pairs(tmp_path)
    (tmp_path / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n")
    ds = SegmentationFolder(tmp_path)
    assert ds.num_classes == 150 and ds.classes == list(ADE20K_CLASSES)
    assert len(set(ADE20K_CLASSES)) == 150
    (tmp_path / "classes.txt").write_text("a\nb\n\nc\nd\ne\n")
    assert SegmentationFolder(tmp_path).classes == ["a", "b", "c", "d", "e"]
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["x", "y", "z"]))
    with pytest.raises(ValueError, match=r"p0\.png holds the label [45], which is not one of the 3 classes"):
        SegmentationFolder(tmp_path, class_map=names)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"1": "x"}))
    with pytest.raises(ValueError, match="reduce_zero_label must be False"):
        SegmentationFolder(tmp_path, class_map=mapping)
    # raw value -> class index (Cityscapes' ids -> train ids): 0 and 5 ignored, 3 and 4 merged
    mapping.write_text(json.dumps({"1": 2, "2": 0, "3": 1, "4": 1, "5": None}))
    ds = SegmentationFolder(tmp_path, class_map=mapping, reduce_zero_label=False,
                            train=False, eval_resize=False)
    assert ds.classes == ["class_0", "class_1", "class_2"]
    raw = read_label_map(ds.pairs[0][1])
    lut = torch.tensor([IGNORE, 2, 0, 1, 1, IGNORE])
    assert torch.equal(ds[0][1], lut[raw])
    mapping.write_text(json.dumps({"1": 2, "2": "x"}))
    with pytest.raises(ValueError, match="not a mix"):
        SegmentationFolder(tmp_path, class_map=mapping, reduce_zero_label=False)
    mapping.write_text(json.dumps({"one": "x"}))
    with pytest.raises(ValueError, match="keys must be raw label values"):
        SegmentationFolder(tmp_path, class_map=mapping, reduce_zero_label=False)


def test_palette_label_maps_give_their_indices(tmp_path):
    write_pairs(tmp_path, count=1, image_ext=".png")
    path = tmp_path / "annotations/training/p0.png"
    indices = np.array(Image.open(path))
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    palette.save(path)
    assert torch.equal(read_label_map(path), torch.from_numpy(indices).long())


def test_problems_are_found_at_construction(tmp_path):
    write_pairs(tmp_path)
    (tmp_path / "annotations/training/p1.png").rename(tmp_path / "annotations/training/q.png")
    with pytest.raises(ValueError, match=r"1 file\(s\) without a label map.*p1\.jpg"):
        SegmentationFolder(tmp_path)
    (tmp_path / "annotations/training/q.png").rename(tmp_path / "annotations/training/p1.png")
    (tmp_path / "annotations/training/p9.png").write_bytes(
        (tmp_path / "annotations/training/p1.png").read_bytes())
    with pytest.raises(ValueError, match=r"without a image.*p9\.png"):
        SegmentationFolder(tmp_path)
    (tmp_path / "annotations/training/p9.png").unlink()
    first = tmp_path / "annotations/training/p0.png"
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(first)
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\ne\n")  # no scan: the first pair is read
    with pytest.raises(ValueError, match=r"p0\.png must be a single-band"):
        SegmentationFolder(tmp_path)
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(first)
    with pytest.raises(ValueError, match=r"p0\.png is 50 x 40 pixels but its image .*p0\.jpg"):
        SegmentationFolder(tmp_path)
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(first)
    with pytest.raises(ValueError, match="mean and std need one value per band"):
        SegmentationFolder(tmp_path, mean=[0.5], std=[0.2])
    with pytest.raises(ValueError, match="mean and std go together"):
        SegmentationFolder(tmp_path, mean=[0.5] * 3)
    with pytest.raises(ValueError, match="ignore_index 3 is a class index"):
        SegmentationFolder(tmp_path, ignore_index=3)
    with pytest.raises(ValueError, match="scale_range"):
        SegmentationFolder(tmp_path, scale_range=(2, 1))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        SegmentationFolder(tmp_path, images="nowhere")
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform(crop_size=0)
