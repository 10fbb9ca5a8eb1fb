"""lomar visualize on a tiny model: the figure from both checkpoint kinds, the
reconstruction's pixels (visible patches pasted back, predictions un-normalised
per patch), bad arguments refused before work; runs pretrained on the files' own
bands (6-band and 1-band uint16 TIFFs): the files read at their bit depth, the band
composite, the contrast stretch, and the refusals (band counts, bands out of range,
16-bit files for an RGB run, no images for a non-RGB run)."""

from pathlib import Path

import pytest
import torch
from PIL import Image

import lomar_ops
from lomar.checkpoint import export_safetensors, save_checkpoint
from lomar.cli import main
from lomar.config import save_config
from lomar.engine import PretrainConfig
from lomar.models import create_model
from lomar.visualize import (composite, contrast_stretch, reconstruct, stretch_limits,
                             visualize)

KWARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2}
CONFIG = {"model": "lomar_vit_small_patch16", "model_kwargs": KWARGS, "norm_pix_loss": True,
          "data": {"input_size": 96}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("lomar_vit_small_patch16", **KWARGS).eval()


@pytest.fixture
def checkpoint(model, tmp_path):
    return save_checkpoint(tmp_path / "checkpoint-last.pt",
                           {"model": model.state_dict(), "step": 3, "config": CONFIG})


def _is_png(path):
    return path.read_bytes()[:4] == b"\x89PNG"


def test_figure_from_a_training_checkpoint_and_given_images(checkpoint, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):  # not square, not the input size: resized and centre-cropped
        Image.new("RGB", (120 + 10 * i, 100), (40 * i, 90, 200)).save(folder / f"{i}.png")
    out = visualize(checkpoint, [folder / "0.png", folder], tmp_path / "fig.png", num_images=2,
                    window_size=5, mask_ratio=0.8)
    assert out == tmp_path / "fig.png" and _is_png(out)
    with Image.open(out) as fig:  # two rows of four panels
        assert fig.height > 0.45 * fig.width


def test_figure_from_safetensors_with_or_without_config(model, tmp_path):
    weights = export_safetensors(model.state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="does not name its model .* pass the model name"):
        visualize(weights, num_images=1, window_size=3)
    out = visualize(weights, num_images=1, window_size=3, model="lomar_vit_small_patch16",
                    model_kwargs=KWARGS, input_size=64)
    assert out == tmp_path / "reconstruction.png" and _is_png(out)
    cfg = PretrainConfig(model="lomar_vit_small_patch16", model_kwargs=KWARGS)
    save_config(cfg, tmp_path / "config.yaml")  # as lomar pretrain leaves it beside the weights
    assert _is_png(visualize(weights, out=tmp_path / "b.png", num_images=1, window_size=7))


def test_reconstruction_pastes_visible_patches_and_unnormalises_predictions(model, monkeypatch):
    imgs = torch.randn(2, 3, 64, 64)
    K, p = 3, 16
    forward = model.forward

    def perfect(*args, **kwargs):  # predicts every patch's normalised target exactly
        loss, _, mask = forward(*args, **kwargs)
        target = lomar_ops.window_patchify(imgs, kwargs["coords"], K, p)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        return loss, (target - mean) / (var + 1e-6).sqrt(), mask

    monkeypatch.setattr(model, "forward", perfect)
    parts = reconstruct(model, imgs, K, 0.6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(parts["reconstruction"], parts["window"], rtol=0, atol=1e-5)
    assert parts["loss"].shape == (2,) and (parts["loss"] < 1e-8).all()
    monkeypatch.undo()

    parts = reconstruct(model, imgs, K, 0.6, torch.Generator().manual_seed(0))
    coords, mask = model.sample(imgs, K, 1, 0.6, torch.Generator().manual_seed(0))
    pixel_mask = mask.view(2, K, 1, K, 1).expand(2, K, p, K, p).reshape(2, K * p, K * p)
    visible, masked = ~pixel_mask, pixel_mask
    assert torch.equal(parts["reconstruction"][visible], parts["window"][visible])
    assert not torch.equal(parts["reconstruction"][masked], parts["window"][masked])
    assert (parts["masked"][masked] == 0.5).all()
    assert torch.equal(parts["masked"][visible], parts["window"][visible])
    top, left = (int(v) * p for v in coords[0, 0])
    want = imgs[0, :, top:top + K * p, left:left + K * p].permute(1, 2, 0)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(parts["window"][0], (want * std + mean).clamp(0, 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reconstruction_under_autocast(model, dtype):
    """A caller's autocast (as on a GPU) gives the fp32 figure within its rounding."""
    imgs = torch.randn(2, 3, 64, 64)
    want = reconstruct(model, imgs, 3, 0.6, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=dtype):
        got = reconstruct(model, imgs, 3, 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(got["window"], want["window"]) and torch.equal(got["coords"],
                                                                      want["coords"])
    assert got["reconstruction"].dtype == torch.float32
    torch.testing.assert_close(got["reconstruction"], want["reconstruction"], rtol=0,
                               atol=0.05 if dtype == torch.bfloat16 else 0.01)
    torch.testing.assert_close(got["loss"], want["loss"], rtol=2e-2, atol=0)


def test_cli(checkpoint, tmp_path, capsys):
    assert main(["visualize", "--checkpoint", str(checkpoint), "--num-images", "1",
                 "--window-size", "4", "--mask-ratio", "0.75", "--out",
                 str(tmp_path / "cli.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli.png")
    assert main(["visualize", "--checkpoint", str(checkpoint), "--window-size", "7"]) == 2
    assert "window_size 7 must fit the 6x6 patch grid of 96x96 images" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"num_images": 0}, ValueError, "num_images must be an integer >= 1, got 0"),
    ({"mask_ratio": 1.0}, ValueError, r"mask_ratio must be in \(0, 1\)"),
    ({"window_size": 0}, ValueError, "window_size must be an integer >= 1, got 0"),
    ({"images": ["/nonexistent.png"]}, FileNotFoundError, "image file or folder not found"),
    ({"stretch": "yes"}, ValueError, r"stretch must be True, False or None \(auto\), got 'yes'"),
])
def test_bad_arguments(checkpoint, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        visualize(checkpoint, **{"window_size": 3, **kwargs})


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        visualize(tmp_path / "nope.pt")


def test_asymmetric_model_checkpoint(tmp_path):
    kwargs = {**KWARGS, "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}
    name = "lomar_vit_small_patch16_dec512d8b"
    model = create_model(name, **kwargs)
    path = save_checkpoint(tmp_path / "checkpoint-1.pt", {"model": model.state_dict(), "config": {
        **CONFIG, "model": name, "model_kwargs": kwargs}})
    assert _is_png(visualize(path, num_images=1, window_size=4))


def test_the_runs_normalisation_is_undone_in_the_figure(model, tmp_path):
    """A run pretrained with data.mean/std: the figure normalises the images with them
    and maps the windows back to pixels with them (ImageNet's would shift the colours)."""
    from lomar.visualize import _model_spec, _preprocess, _to_pixels

    stats = {"mean": [0.2, 0.3, 0.4], "std": [0.1, 0.2, 0.3]}
    path = save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(),
                                               "config": {**CONFIG, "data": {**CONFIG["data"],
                                                                             **stats}}})
    _, spec = _model_spec(path, None, None)
    assert spec["mean"] == (0.2, 0.3, 0.4) and spec["std"] == (0.1, 0.2, 0.3)
    image = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)
    normalised = _preprocess(96, spec["mean"], spec["std"])(image)
    back = _to_pixels(normalised.permute(1, 2, 0), spec["mean"], spec["std"])
    torch.testing.assert_close(back, image.permute(1, 2, 0).float() / 255, atol=1e-6, rtol=0)
    assert _is_png(visualize(path, num_images=1, window_size=3))


# Runs pretrained on the files' own bands (data.bands=all, 16-bit TIFFs).

TINY_BANDS_RUN = ["model=lomar_vit_small_patch16", "data.input_size=64", "data.num_workers=0",
                  "mask.window_size=3", "mask.num_windows=2", "batch_size=2", "max_steps=2",
                  "progress=false", "device=cpu", "data.bands=all"]


def _write_scenes(folder, bands, sizes, seed=0):
    """uint16 TIFFs of 12-bit values (as many sensors write them): a ramp per band, in
    another direction and range for each band, plus noise."""
    import numpy as np
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        rows, cols = np.mgrid[0:h, 0:w]
        planes = [(200 * (b + 1) + (rows if b % 2 else cols) * (b + 3) * 2
                   + rng.integers(0, 300, (h, w))) for b in range(bands)]
        array = np.stack(planes, -1).astype(np.uint16)
        layout = {"planarconfig": "contig"} if bands > 1 else {}
        tifffile.imwrite(folder / f"{i}.tif", array if bands > 1 else array[..., 0],
                         photometric="minisblack", **layout)
    return folder


def _pretrain_on(folder, out, bands):
    from lomar.config import load_config
    from lomar.engine import pretrain

    cfg = load_config(PretrainConfig, None, TINY_BANDS_RUN + [
        f"data.path={folder}", f"output_dir={out}",
        f"model_kwargs={{depth: 1, embed_dim: 32, num_heads: 2, in_chans: {bands}}}",
        f"data.mean={[0.05] * bands}", f"data.std={[0.03] * bands}"])
    return Path(pretrain(cfg)["checkpoint"])


@pytest.fixture(scope="module")
def six_band_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    # two at the input size (the original panel is then the file itself), two not
    folder = _write_scenes(root / "scenes", 6, [(64, 64), (64, 64), (80, 96), (72, 64)])
    return _pretrain_on(folder, root / "run", 6), folder


@pytest.fixture(scope="module")
def one_band_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    folder = _write_scenes(root / "slices", 1, [(64, 64), (90, 70), (64, 80)])
    return _pretrain_on(folder, root / "run", 1), folder


@pytest.fixture
def drawn(monkeypatch):
    """What visualize hands the figure: the panels, per call."""
    import lomar.visualize as viz

    calls, plot = [], viz._plot

    def capture(parts, *args):
        calls.append(parts)
        return plot(parts, *args)

    monkeypatch.setattr(viz, "_plot", capture)
    return calls


def _figure(path):
    import numpy as np

    with Image.open(path) as fig:
        return np.asarray(fig.convert("RGB"))


def test_six_band_16_bit_run_figure_reads_its_files_and_stretches_each_band(six_band_run,
                                                                             tmp_path, drawn):
    import numpy as np
    import tifffile

    checkpoint, folder = six_band_run
    files = [folder / "0.tif", folder / "1.tif"]
    out = visualize(checkpoint, files, tmp_path / "six.png", num_images=2, window_size=3,
                    bands=[5, 3, 1])
    assert _is_png(out)
    parts = drawn[-1]
    for r, f in enumerate(files):  # 64x64 files: the original is the file / 65535, bands 5, 3, 1
        values = tifffile.imread(f)[..., [5, 3, 1]].astype(np.float64) / 65535
        low, high = np.percentile(values, [2, 98], axis=(0, 1))
        want = np.clip((values - low) / (high - low), 0, 1)
        np.testing.assert_allclose(parts["original"][r].numpy(), want, atol=1e-5, rtol=0)
        # the window (before masking) is the same stretch of the same pixels
        top, left = (int(v) * 16 for v in parts["coords"][r])
        np.testing.assert_allclose(parts["window"][r].numpy(),
                                   want[top:top + 48, left:left + 48], atol=1e-5, rtol=0)
    mask = parts["mask"]
    assert (parts["masked"][mask] == 0.5).all()
    assert torch.equal(parts["masked"][~mask], parts["window"][~mask])
    assert parts["reconstruction"].shape == parts["window"].shape == (2, 48, 48, 3)
    assert 0 <= float(parts["reconstruction"].min()) and float(parts["reconstruction"].max()) <= 1
    # the safetensors export, with the run's config.yaml beside it, gives the same figure
    again = visualize(checkpoint.parent / "model.safetensors", files, tmp_path / "st.png",
                      num_images=2, window_size=3, bands=[5, 3, 1])
    assert np.array_equal(_figure(again), _figure(out))


def test_the_composite_choice_changes_the_pixels_drawn(six_band_run, tmp_path):
    import numpy as np

    checkpoint, folder = six_band_run
    first = visualize(checkpoint, [folder], tmp_path / "a.png", num_images=3, window_size=3)
    same = visualize(checkpoint, [folder], tmp_path / "b.png", num_images=3, window_size=3,
                     bands=(0, 1, 2))
    other = visualize(checkpoint, [folder], tmp_path / "c.png", num_images=3, window_size=3,
                      bands=(4, 2, 0))
    grey = visualize(checkpoint, [folder], tmp_path / "d.png", num_images=3, window_size=3,
                     bands=[3])
    assert np.array_equal(_figure(first), _figure(same))  # the default: the first three
    assert not np.array_equal(_figure(first), _figure(other))
    # one band: grey (red = green = blue) but for the window's yellow outline (red = green)
    pixels = _figure(grey).astype(int)
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert 0 < (pixels[..., 2] != pixels[..., 0]).mean() < 0.01
    x = torch.rand(2, 4, 4, 6)
    assert torch.equal(composite(x, (4, 2, 0)), torch.stack([x[..., 4], x[..., 2], x[..., 0]], -1))
    assert composite(x, (3,)).shape == (2, 4, 4, 1)


def test_one_band_16_bit_run_is_drawn_grey(one_band_run, tmp_path, drawn):
    checkpoint, folder = one_band_run
    out = visualize(checkpoint, [folder], tmp_path / "one.png", num_images=3, window_size=3)
    assert _is_png(out)
    parts = drawn[-1]
    assert parts["original"].shape == (3, 64, 64, 1)
    # stretched: in each image, the 2% darkest pixels black and the 2% brightest white
    original = parts["original"].flatten(1, 3)
    for end in (0, 1):
        share = (original == end).float().mean(1)
        assert ((share - 0.02).abs() < 0.003).all(), share
    with pytest.raises(ValueError, match=r"band 1 does not exist; the model takes 1 band\(s\), "
                                         r"0 to 0"):
        visualize(checkpoint, [folder], bands=[1], window_size=3)


def test_contrast_stretch_maps_the_2nd_and_98th_percentiles_to_0_and_1():
    import numpy as np

    torch.manual_seed(0)
    x = torch.rand(2, 20, 30, 3) * torch.tensor([0.01, 0.5, 0.06]) + torch.tensor([0.0, 0.2,
                                                                                   0.001])
    x[1, ..., 2] = 0.3  # one value over the image: nothing to stretch
    low, high = stretch_limits(x)
    assert low.shape == high.shape == (2, 1, 1, 3)
    want = np.percentile(x.double().numpy(), [2, 98], axis=(1, 2))
    np.testing.assert_allclose(low[:, 0, 0].numpy(), want[0], rtol=1e-5)
    np.testing.assert_allclose(high[:, 0, 0].numpy(), want[1], rtol=1e-5)
    out = contrast_stretch(x, low, high)
    stretched = high > low
    assert stretched.sum() == 5
    torch.testing.assert_close(contrast_stretch(low, low, high)[stretched], torch.zeros(5))
    torch.testing.assert_close(contrast_stretch(high, low, high)[stretched], torch.ones(5))
    inside = (x > low) & (x < high)
    torch.testing.assert_close(out[inside], ((x - low) / (high - low))[inside])
    assert (out[(x <= low) & stretched] == 0).all() and (out[(x >= high) & stretched] == 1).all()
    assert torch.equal(out[1, ..., 2], x[1, ..., 2])  # the flat band as it is


def test_a_file_of_another_band_count_is_refused_by_name(six_band_run, tmp_path):
    checkpoint, folder = six_band_run
    four = _write_scenes(tmp_path / "four", 4, [(64, 64)])
    with pytest.raises(ValueError, match=r"visualize: .*four/0.tif: 4 band\(s\) where the run "
                                         r"takes 6 \(model_kwargs.in_chans\)"):
        visualize(checkpoint, [folder / "0.tif", four / "0.tif"], tmp_path / "x.png",
                  window_size=3)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("bands,match", [
    ([0, 1, 6], r"band 6 does not exist; the model takes 6 band\(s\), 0 to 5"),
    ([0, 1], r"bands must be three band indices \(drawn as red, green, blue\) or one"),
    ([-1], "band -1 does not exist"),
])
def test_composite_bands_out_of_range_are_refused(six_band_run, bands, match):
    checkpoint, folder = six_band_run
    with pytest.raises(ValueError, match=match):
        visualize(checkpoint, [folder], bands=bands, window_size=3)


def test_the_default_composite_is_the_first_three_bands_or_the_first_grey():
    from lomar.visualize import _composite_bands

    assert _composite_bands(None, 6) == _composite_bands(None, 3) == (0, 1, 2)
    assert _composite_bands(None, 2) == _composite_bands(None, 1) == (0,)
    assert _composite_bands([2, 0, 1], 3) == (2, 0, 1) and _composite_bands(4, 6) == (4,)


def test_a_run_of_picked_bands_reads_them_from_each_file(model, tmp_path, drawn):
    """data.bands [4, 1]: the model's two bands are the files' bands 4 and 1 (band 0
    drawn grey by default); a file without band 4 is refused by name."""
    import numpy as np
    import tifffile

    kwargs = {**KWARGS, "in_chans": 2}
    net = create_model("lomar_vit_small_patch16", pixel_mean=[0.05] * 2, pixel_std=[0.03] * 2,
                       **kwargs)
    path = save_checkpoint(tmp_path / "c.pt", {"model": net.state_dict(), "config": {
        **CONFIG, "model_kwargs": kwargs, "data": {"input_size": 64, "bands": [4, 1],
                                                   "mean": [0.05] * 2, "std": [0.03] * 2}}})
    scenes = _write_scenes(tmp_path / "six", 6, [(64, 64)])
    visualize(path, [scenes / "0.tif"], tmp_path / "f.png", window_size=3, stretch=False)
    band4 = torch.from_numpy(tifffile.imread(scenes / "0.tif")[..., 4].astype(np.float32))
    torch.testing.assert_close(drawn[-1]["original"][0, ..., 0], band4 / 65535, atol=1e-6,
                               rtol=0)
    three = _write_scenes(tmp_path / "three", 3, [(64, 64)])
    with pytest.raises(ValueError, match=r"visualize: .*three/0.tif: data.bands asks for band 4, "
                                         r"the file has 3"):
        visualize(path, [three / "0.tif"], window_size=3)


def test_a_float_run_is_drawn_from_its_values_and_refuses_another_sample_type(model, tmp_path,
                                                                             drawn):
    """float32 files (CT's Hounsfield units): values as they are, mean/std in those
    units, nothing clamped before the stretch; a uint16 file among them is refused."""
    import numpy as np
    import tifffile

    kwargs = {**KWARGS, "in_chans": 1}
    stats = {"mean": [300.0], "std": [900.0]}
    net = create_model("lomar_vit_small_patch16", pixel_mean=stats["mean"],
                       pixel_std=stats["std"], **kwargs)
    path = save_checkpoint(tmp_path / "c.pt", {"model": net.state_dict(), "config": {
        **CONFIG, "model_kwargs": kwargs, "data": {"input_size": 64, "bands": "all", **stats}}})
    rows = np.mgrid[0:64, 0:64][0]
    hu = (-1000 + 50 * rows + np.random.default_rng(0).normal(0, 40, (64, 64)))
    tifffile.imwrite(tmp_path / "ct.tif", hu.astype(np.float32), photometric="minisblack")
    visualize(path, [tmp_path / "ct.tif"], tmp_path / "f.png", window_size=3)
    values = hu.astype(np.float32).astype(np.float64)
    low, high = np.percentile(values, [2, 98])
    want = np.clip((values - low) / (high - low), 0, 1)
    np.testing.assert_allclose(drawn[-1]["original"][0, ..., 0].numpy(), want, atol=1e-4, rtol=0)
    _write_scenes(tmp_path / "u16", 1, [(64, 64)])
    with pytest.raises(ValueError, match=r"visualize: .*u16/0.tif: samples of uint16 where the "
                                         r"run's first files hold float32"):
        visualize(path, [tmp_path / "ct.tif", tmp_path / "u16" / "0.tif"], window_size=3)


def test_a_non_rgb_run_needs_its_own_images(six_band_run):
    with pytest.raises(ValueError, match=r"data.bands=all\) and the demo photos are RGB: give "
                                         r"its images"):
        visualize(six_band_run[0], window_size=3)


def test_an_rgb_run_refuses_16_bit_files(checkpoint, tmp_path):
    import numpy as np
    import tifffile

    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 40000, np.uint16), photometric="rgb")
    with pytest.raises(ValueError, match=r"rgb16.tif holds uint16 samples, and this run was "
                                         r"pretrained on 8-bit RGB .*as its training did"):
        visualize(checkpoint, [path], window_size=3)


def test_a_many_band_model_without_its_run_config_is_refused(tmp_path):
    kwargs = {**KWARGS, "in_chans": 6}
    net = create_model("lomar_vit_small_patch16", pixel_mean=[0.1] * 6, pixel_std=[0.1] * 6,
                       **kwargs)
    weights = export_safetensors(net.state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"the model takes 6 band\(s\) and no run config"):
        visualize(weights, model="lomar_vit_small_patch16", model_kwargs=kwargs, window_size=3)


def test_rgb_runs_draw_what_they_drew_before(checkpoint, tmp_path, drawn):
    """An RGB run without bands/stretch: the photos decoded as 8-bit RGB, unstretched,
    the masked patches grey, no note in the title (the figure as before bands existed)."""
    from lomar.data import read_rgb
    from lomar.visualize import _preprocess, _to_pixels

    folder = tmp_path / "imgs"
    folder.mkdir()
    ramp = torch.arange(130, dtype=torch.uint8).expand(100, 130)  # dark to mid grey
    Image.fromarray(torch.stack([ramp, ramp // 2, 255 - ramp], -1).numpy()).save(folder / "a.png")
    visualize(checkpoint, [folder], tmp_path / "fig.png", num_images=1, window_size=3)
    parts = drawn[-1]
    prep = _preprocess(96, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    want = _to_pixels(prep(read_rgb(folder / "a.png")).permute(1, 2, 0))
    assert torch.equal(parts["original"][0], want)
    mask = parts["mask"]
    assert (parts["masked"][mask] == 0.5).all()
    assert torch.equal(parts["masked"][~mask], parts["window"][~mask])
    visualize(checkpoint, [folder], tmp_path / "s.png", num_images=1, window_size=3,
              stretch=True)  # asked: each band stretched from its 2nd-98th percentiles
    stretched = drawn[-1]["original"][0]
    assert not torch.equal(stretched, parts["original"][0])
    low, high = stretch_limits(want[None])
    torch.testing.assert_close(stretched, contrast_stretch(want, low[0], high[0]))


def test_cli_bands_and_stretch(six_band_run, tmp_path, capsys):
    checkpoint, folder = six_band_run
    out = tmp_path / "cli.png"
    assert main(["visualize", "--checkpoint", str(checkpoint), "--images", str(folder),
                 "--num-images", "2", "--window-size", "3", "--bands", "5", "3", "1",
                 "--no-stretch", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and _is_png(out)
    assert main(["visualize", "--checkpoint", str(checkpoint), "--images", str(folder),
                 "--window-size", "3", "--bands", "9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lomar visualize: bands [9]: band 9 does not exist; the model takes 6")
