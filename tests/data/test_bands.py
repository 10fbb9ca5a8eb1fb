"""The window pipeline on the files' own bands and bit depth (data.bands)."""

import numpy as np
import pytest
import tifffile
import torch

from lomar.data import WindowCrops, WindowSpec, read_image
from lomar.data.crop import render_windows, sample_crop

SPEC = WindowSpec(input_size=64, patch_size=8, window_size=3, num_windows=2)


@pytest.fixture
def scene(tmp_path):
    array = np.random.default_rng(0).integers(0, 65536, (90, 110, 6), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", array, photometric="minisblack", planarconfig="contig")
    return tmp_path / "s.tif"


def _draw(pipeline, path, seed=0):
    torch.manual_seed(seed)
    return pipeline(path)


def test_windows_keep_every_band_and_bit_and_bands_pick_in_order(scene):
    windows, coords = _draw(WindowCrops(SPEC, bands="all"), scene)
    assert windows.dtype == torch.uint16 and windows.shape == (2, 6, 24, 24)
    picked, same = _draw(WindowCrops(SPEC, bands=[5, 0]), scene)
    assert torch.equal(coords, same) and torch.equal(picked, windows[:, [5, 0]])
    # The same as rendering the decoded image with the same draws: nothing lost on the way.
    torch.manual_seed(0)
    crop = sample_crop((90, 110), SPEC.input_size, SPEC.scale, SPEC.ratio, SPEC.hflip)
    assert torch.equal(render_windows(read_image(scene), crop, coords, 3, 8), windows)


def test_each_band_is_resampled_on_its_own(scene):
    windows, _ = _draw(WindowCrops(SPEC, bands="all"), scene)
    for b in range(6):
        alone, _ = _draw(WindowCrops(SPEC, bands=[b]), scene)
        assert torch.equal(alone[:, 0], windows[:, b])


def test_refusals_name_the_file_and_the_value(scene, tmp_path):
    with pytest.raises(ValueError, match=r"s.tif: data.bands asks for band 6, the file has 6"):
        _draw(WindowCrops(SPEC, bands=[0, 6]), scene)
    with pytest.raises(ValueError, match=r"s.tif: 6 band\(s\), the run's other files 4"):
        _draw(WindowCrops(SPEC, bands="all", channels=4), scene)
    tifffile.imwrite(tmp_path / "f.tif", np.ones((40, 40), np.float32))
    with pytest.raises(ValueError, match=r"f.tif: float32 pixels: the pretraining pipelines "
                                         r"take uint8 or uint16 files"):
        _draw(WindowCrops(SPEC, bands="all"), tmp_path / "f.tif")
    for bad in ("bgr", [], [1, 1], [-1], [True]):
        with pytest.raises(ValueError, match="bands must be 'rgb', 'all' or a list"):
            WindowCrops(SPEC, bands=bad)
