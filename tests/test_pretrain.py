"""lomar pretrain on a tiny model and the offline photos: exact resume, a NaN stop
that keeps the last good checkpoint, bad configurations refused before work."""

import math
import subprocess
import sys

import pytest
import torch

from lomar.checkpoint import load_checkpoint
from lomar.config import ConfigError, load_config
from lomar.data import build_demo_photos
from lomar.engine import PretrainConfig, pretrain
from lomar.models import LoMaRPretrain
from lomar.run_log import read_log


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return build_demo_photos(tmp_path_factory.mktemp("photos"), num_images=24, size=64, seed=0)


def config(photos, out, **over):
    base = ["model=lomar_vit_small_patch16",
            "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
            f"data.path={photos}", "data.input_size=64", "data.num_workers=0",
            "mask.window_size=3", "mask.num_windows=2", "batch_size=4", "log_every=1",
            "optim.lr=0.001", "optim.warmup_epochs=0.5", "progress=false",
            f"output_dir={out}", "device=cpu"]
    return load_config(PretrainConfig, None, base + [f"{k}={v}" for k, v in over.items()])


def test_resume_continues_exactly(photos, tmp_path):
    straight = pretrain(config(photos, tmp_path / "straight", max_steps=8, save_every=100))
    pretrain(config(photos, tmp_path / "split", max_steps=4, save_every=4))
    first = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")
    assert first["step"] == 4
    # The same job, resumed to 8 steps (a max_steps change is the only difference).
    pretrain(config(photos, tmp_path / "split", max_steps=8, save_every=100,
                    resume=str(tmp_path / "split" / "checkpoint-last.pt")))
    losses_a = [r["loss"] for r in read_log(tmp_path / "straight" / "log.jsonl")]
    losses_b = [r["loss"] for r in read_log(tmp_path / "split" / "log.jsonl")]
    assert len(losses_a) == 8 and losses_a == losses_b  # bit for bit on CPU
    a = load_checkpoint(tmp_path / "straight" / "checkpoint-last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["steps"] == 8 and math.isfinite(straight["loss"])
    assert (tmp_path / "straight" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "straight" / "model.safetensors").is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(photos, tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = LoMaRPretrain.forward

    def poisoned(self, *args, **kwargs):
        loss, pred, mask = forward(self, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 4 else loss), pred, mask

    monkeypatch.setattr(LoMaRPretrain, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="the loss is not finite at step 3"):
        pretrain(config(photos, tmp_path, max_steps=6, save_every=2))
    state = load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("override,exc,match", [
    ({"mask.window_size": 5}, ConfigError, r"mask.window_size 5 must be in \[1, 4\]"),
    ({"mask.mask_ratio": 1.0}, ConfigError, r"mask.mask_ratio must be in \(0, 1\)"),
    ({"mask.mask_ratio": 0.05}, ConfigError, "mask at least one of the 9 patches"),
    ({"data.input_size": 60}, ConfigError, "input_size 60 must be a multiple of the patch size 16"),
    ({"model": "vit_small_patch16"}, ConfigError, "model must be a LoMaR pretraining model"),
    ({"model": "lomar_vit_tiny_patch16"}, ConfigError, "known: lomar_vit_small_patch16"),
    ({"data.path": "/nonexistent/folder"}, FileNotFoundError, "data folder not found"),
])
def test_bad_configurations_fail_before_work(photos, tmp_path, override, exc, match):
    with pytest.raises(exc, match=match):
        pretrain(config(photos, tmp_path / "out", max_steps=1, **override))
    assert not (tmp_path / "out" / "checkpoint-last.pt").exists()


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images .* found under"):
        pretrain(config(tmp_path / "empty", tmp_path / "out", max_steps=1))


def test_cli(tmp_path):
    run = subprocess.run([sys.executable, "-m", "lomar", "pretrain", "--help-config"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "window_size: 7" in run.stdout
    run = subprocess.run([sys.executable, "-m", "lomar", "pretrain", "optim.lrr=1"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "unknown key optim.lrr" in run.stderr
