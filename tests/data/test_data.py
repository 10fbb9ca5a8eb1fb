"""lomar.data: folder layouts, corrupt files, the augmentation, the offline demo set."""

import shutil

import pytest
import torch

from lomar.data import ImageFiles, build_demo_photos, find_images, pretrain_transform


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return build_demo_photos(tmp_path_factory.mktemp("demo"), num_images=20, size=64, seed=1)


def test_demo_set_is_reproducible_and_real(photos, tmp_path):
    files = sorted(photos.glob("*.png"))
    assert len(files) == 20
    again = build_demo_photos(tmp_path / "again", num_images=20, size=64, seed=1)
    assert all(a.read_bytes() == (again / a.name).read_bytes() for a in files)
    other = build_demo_photos(tmp_path / "other", num_images=20, size=64, seed=2)
    assert any(a.read_bytes() != (other / a.name).read_bytes() for a in files)
    image, label = ImageFiles(photos)[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and label == -1
    assert image.float().std() > 10  # a photo, not a flat image


def test_image_folder_layout(photos, tmp_path):
    for i, name in enumerate(["cats", "dogs"]):
        (tmp_path / name / "sub").mkdir(parents=True)
        for f in sorted(photos.glob("*.png"))[i * 3:(i + 1) * 3]:
            shutil.copy(f, tmp_path / name / "sub" / f.name)
    files, labels, classes = find_images(tmp_path)
    assert classes == ["cats", "dogs"] and labels == [0, 0, 0, 1, 1, 1] and len(files) == 6


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        find_images(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"no images .* found under {tmp_path}"):
        find_images(tmp_path)


def test_corrupt_file_is_skipped_with_its_path_or_stops(photos, tmp_path):
    for f in sorted(photos.glob("*.png"))[:3]:
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / "photo_00000.png"
    bad.write_bytes(b"not a png at all")
    ds = ImageFiles(tmp_path)
    with pytest.warns(UserWarning, match=f"skipping corrupt image file {bad}"):
        image, _ = ds[0]
    assert torch.equal(image, ImageFiles(tmp_path)[1][0])  # the next readable file
    with pytest.raises(RuntimeError, match=f"corrupt image file {bad}"):
        ImageFiles(tmp_path, on_corrupt="error")[0]
    with pytest.raises(ValueError, match="on_corrupt must be 'skip' or 'error'"):
        ImageFiles(tmp_path, on_corrupt="ignore")


def test_pretrain_transform_any_resolution(photos):
    torch.manual_seed(0)
    ds = ImageFiles(photos, pretrain_transform((48, 80)))
    image, _ = ds[3]
    assert image.shape == (3, 48, 80) and image.dtype == torch.float32
    assert -3 < image.mean() < 3 and image.std() > 0.1  # normalised
