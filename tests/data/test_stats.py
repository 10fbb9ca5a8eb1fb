"""lomar stats: per-band statistics against NumPy over every pixel, regions of big
files, the refusals, and the fragment a run takes as a second --config."""

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from lomar.cli import main
from lomar.config import load_config
from lomar.data.stats import band_statistics
from lomar.engine import PretrainConfig


def _write(path, array, **kw):
    tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig", **kw)
    return array


@pytest.fixture
def scenes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [_write(tmp_path / f"s{i}.tif", rng.integers(0, 4096, (40 + i, 50, 6),
                                                           dtype=np.uint16)) for i in range(3)]
    return tmp_path, arrays


def test_moments_min_max_equal_numpy_over_every_pixel(scenes):
    folder, arrays = scenes
    stats = band_statistics(folder)
    values = np.concatenate([a.reshape(-1, 6) for a in arrays]).astype(np.float64) / 65535
    assert stats.bands == 6 and stats.dtype == torch.uint16 and stats.pixels == len(values)
    np.testing.assert_allclose(stats.mean, values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, values.std(0), rtol=1e-10)
    np.testing.assert_array_equal(stats.min, values.min(0))
    np.testing.assert_array_equal(stats.max, values.max(0))
    assert stats.histogram.shape == (6, 256) and int(stats.histogram[0].sum()) == len(values)
    assert float(stats.edges[0]) == values.min() and float(stats.edges[-1]) == values.max()


def test_big_files_are_read_by_seeded_regions(tmp_path):
    big = np.random.default_rng(1).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", big, photometric="rgb", tile=(64, 64))
    a = band_statistics(tmp_path, max_pixels=10_000, region=32, regions_per_file=5, seed=3)
    b = band_statistics(tmp_path, max_pixels=10_000, region=32, regions_per_file=5, seed=3)
    assert a.pixels == 5 * 32 * 32 and a.mean == b.mean
    assert all(0 <= m <= 1 for m in a.mean)


def test_mixed_layouts_nan_and_corrupt_files(scenes, tmp_path):
    folder, _ = scenes
    _write(folder / "t.tif", np.zeros((8, 8, 4), np.uint16))
    with pytest.raises(ValueError, match=r"t.tif has 4 band\(s\) of uint16, the first file "
                                         r".*s0.tif 6 of uint16"):
        band_statistics(folder)
    (folder / "t.tif").write_bytes(b"II*\x00broken")
    stats = band_statistics(folder)
    assert [p for p, _ in stats.skipped] == [str(folder / "t.tif")] and len(stats.files) == 3
    nan = tmp_path / "nan"
    nan.mkdir()
    tifffile.imwrite(nan / "f.tif", np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="f.tif holds NaN"):
        band_statistics(nan)


def test_cli_fragment_layers_over_a_config(tmp_path):
    rng = np.random.default_rng(2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    out = tmp_path / "stats" / "stats.yaml"
    assert main(["stats", str(photos), "--out", str(out)]) == 0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    fragment = yaml.safe_load(out.read_text())
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"path": str(photos), "input_size": 128}}))
    cfg = load_config(PretrainConfig, [base, out])
    assert cfg.data.path == str(photos) and cfg.data.input_size == 128  # kept
    assert cfg.data.mean == fragment["data"]["mean"] and len(cfg.data.std) == 3
    assert main(["stats", str(tmp_path / "missing")]) == 2


def test_band_names_the_files_give_are_reported(tmp_path):
    from lomar.data import DEMO_BAND_NAMES, build_demo_bands

    named = band_statistics(build_demo_bands(tmp_path / "s", num_images=2, size=64))
    assert named.names == list(DEMO_BAND_NAMES) and named.label(3) == "band 3 (Luminance)"
    assert f"# band names {list(DEMO_BAND_NAMES)}" in named.yaml()
    tifffile.imwrite(tmp_path / "s" / "plain.tif", np.zeros((64, 64, 6), np.uint16),
                     photometric="minisblack", planarconfig="contig")
    mixed = band_statistics(tmp_path / "s")  # one file names no bands: no names claimed
    assert mixed.names is None and "band names" not in mixed.yaml()
