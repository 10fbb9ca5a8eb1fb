"""lomar visualize on a tiny model: the figure from both checkpoint kinds, the
reconstruction's pixels (visible patches pasted back, predictions un-normalised
per patch), bad arguments refused before work."""

import pytest
import torch
from PIL import Image

import lomar_ops
from lomar.checkpoint import export_safetensors, save_checkpoint
from lomar.cli import main
from lomar.config import save_config
from lomar.engine import PretrainConfig
from lomar.models import create_model
from lomar.visualize import reconstruct, visualize

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
