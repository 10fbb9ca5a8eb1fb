"""The window pipeline end to end: a training step on the loader's uint8 windows equals
the step on full normalised crops (same seed, full-scale decoding), the model's three
inputs (float images, uint8 images, uint8 windows) agree, the loader's workers live
across epochs without changing what is drawn, and the configuration is checked."""

import pytest
import torch

import lomar_ops
from lomar.config import ConfigError, load_config
from lomar.data.crop import render_crop, render_windows, sample_crop
from lomar.data import IMAGENET_MEAN, IMAGENET_STD, build_demo_photos
from lomar.engine import PretrainConfig, pretrain
from lomar.engine.loop import StepLoop
from lomar.models import create_model
from lomar.run_log import read_log

TINY = dict(depth=2, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return build_demo_photos(tmp_path_factory.mktemp("photos"), num_images=24, size=160, seed=0)


def job(photos, out, *extra):
    return load_config(PretrainConfig, None, [
        "model=lomar_vit_small_patch16", "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
        "data.input_size=64", "data.num_workers=0", "mask.window_size=3", "mask.num_windows=2",
        "batch_size=4", "log_every=1", "optim.lr=0.001", "optim.warmup_epochs=0.5",
        "progress=false", "device=cpu", f"data.path={photos}", f"output_dir={out}", *extra])


def test_a_step_on_windows_equals_the_step_on_full_crops(photos, tmp_path):
    runs = {}
    for pipeline in ("windows", "full"):
        pretrain(job(photos, tmp_path / pipeline, "max_steps=3", "save_every=100",
                     f"data.pipeline={pipeline}", "data.reduced_decode=false"))
        runs[pipeline] = [r["loss"] for r in read_log(tmp_path / pipeline / "log.jsonl")]
    assert len(runs["windows"]) == 3
    for a, b in zip(runs["windows"], runs["full"]):
        assert a == pytest.approx(b, rel=1e-3)


def _model():
    torch.manual_seed(0)
    return create_model("lomar_vit_small_patch16", **TINY).eval()


def test_the_model_takes_floats_uint8_images_or_uint8_windows():
    model = _model()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 96, 128), dtype=torch.uint8, generator=g)
    coords = lomar_ops.sample_windows(2, 6, 8, 3, 4, generator=g)
    mask = lomar_ops.sample_window_masks(6, 4, 0.75, generator=g)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    floats = (images.float() / 255 - mean) / std
    windows = torch.stack([torch.stack([images[b, :, r * 16:(r + 4) * 16, c * 16:(c + 4) * 16]
                                        for r, c in coords[b].tolist()]) for b in range(2)])
    with torch.no_grad():
        a = model(floats, 4, 3, 0.75, coords=coords, window_mask=mask)
        b = model(images, 4, 3, 0.75, coords=coords, window_mask=mask)
        c = model(windows, 4, 3, 0.75, coords=coords, window_mask=mask)
        d = model(windows, 4, 3, 0.75, window_mask=mask)  # iRPE: corners not needed
    assert torch.equal(b[0], c[0]) and torch.equal(b[1], c[1]) and torch.equal(c[0], d[0])
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)  # same pixels, fp32 rounding


def test_windows_from_the_loader_need_their_corners_for_absolute_positions():
    torch.manual_seed(0)
    model = create_model("lomar_vit_small_patch16", abs_pos_embed=True, **TINY)
    windows = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="absolute position embedding needs the windows' corners"):
        model(windows, 2, 3, 0.75)
    with pytest.raises(ValueError, match=r"windows must be \(B, n, 3, K\*p, K\*p\)"):
        _model()(windows, 3, 3, 0.75)
    loss = model(windows, 2, 3, 0.75, coords=torch.zeros(2, 3, 2, dtype=torch.int64))[0]
    assert torch.isfinite(loss)


def test_masks_come_from_the_per_sample_generators_whatever_the_input():
    model = _model()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    coords = torch.tensor([[[0, 0], [1, 2]], [[2, 2], [0, 1]]])
    windows = torch.stack([torch.stack([images[b, :, r * 16:(r + 2) * 16, c * 16:(c + 2) * 16]
                                        for r, c in coords[b].tolist()]) for b in range(2)])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    _, _, m1 = model(images, 2, 2, 0.5, generator=gens(), coords=coords)
    _, _, m2 = model(windows, 2, 2, 0.5, generator=gens())
    assert torch.equal(m1, m2)


def test_render_windows_feed_the_model_as_the_crop_does():
    image = torch.randint(0, 256, (3, 200, 150), dtype=torch.uint8)
    crop = sample_crop((200, 150), 64, generator=torch.Generator().manual_seed(1))
    coords = lomar_ops.sample_windows(1, 4, 4, 3, 2, generator=torch.Generator().manual_seed(2))
    windows = render_windows(image, crop, coords[0], 2, 16)[None]
    full = render_crop(image, crop)[None]
    mask = lomar_ops.sample_window_masks(3, 2, 0.5, generator=torch.Generator().manual_seed(3))
    model = _model()
    with torch.no_grad():
        a = model(windows, 2, 3, 0.5, window_mask=mask)[0]
        b = model(full, 2, 3, 0.5, coords=coords, window_mask=mask)[0]
    assert torch.equal(a, b)


def test_loader_workers_live_across_epochs_and_draw_the_same(photos, tmp_path, monkeypatch):
    made = []
    original = StepLoop._loader

    def counting(self):
        loader = original(self)
        made.append(loader)
        return loader

    monkeypatch.setattr(StepLoop, "_loader", counting)
    # 24 images / batch 4 = 6 steps an epoch: 8 steps cross an epoch boundary.
    pretrain(job(photos, tmp_path / "workers", "max_steps=8", "save_every=100",
                 "data.num_workers=2"))
    assert len(made) == 1 and made[0].persistent_workers and made[0].prefetch_factor >= 2
    pretrain(job(photos, tmp_path / "main", "max_steps=8", "save_every=100"))
    a = [r["loss"] for r in read_log(tmp_path / "workers" / "log.jsonl")]
    b = [r["loss"] for r in read_log(tmp_path / "main" / "log.jsonl")]
    assert len(a) == 8 and a == b  # the same items, crops and windows in every epoch
    assert all(0 <= r["data_wait"] <= 1 for r in read_log(tmp_path / "main" / "log.jsonl"))


def test_configuration_is_checked(photos, tmp_path):
    with pytest.raises(ConfigError, match="mask.window_sampling must be 'image'"):
        job(photos, tmp_path, "mask.window_sampling=batch").validate()
    job(photos, tmp_path, "mask.window_sampling=batch", "data.pipeline=full").validate()
    with pytest.raises(ConfigError, match=r"data.pipeline must be one of \['windows', 'full'\]"):
        job(photos, tmp_path, "data.pipeline=crops")
