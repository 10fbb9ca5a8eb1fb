"""lomar pretrain on a tiny model and the offline photos: exact resume, a kill during
a checkpoint write that leaves the previous one to resume from, a NaN stop that keeps
the last good checkpoint, bad configurations refused before work, two processes
(torchrun, gloo) equal to one with the same global batch."""

import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from lomar.checkpoint import PAUSE_ENV, load_checkpoint
from lomar.config import ConfigError, load_config
from lomar.data import build_demo_photos
from lomar.engine import PretrainConfig, pretrain
from lomar.models import LoMaRPretrain
from lomar.run_log import read_log


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return build_demo_photos(tmp_path_factory.mktemp("photos"), num_images=24, size=64, seed=0)


TINY_RUN = ["model=lomar_vit_small_patch16",
            "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
            "data.input_size=64", "data.num_workers=0",
            "mask.window_size=3", "mask.num_windows=2", "batch_size=4", "log_every=1",
            "optim.lr=0.001", "optim.warmup_epochs=0.5", "progress=false",
            "device=cpu"]


def overrides(photos, out, **over):
    return TINY_RUN + [f"data.path={photos}", f"output_dir={out}"] + [
        f"{k}={v}" for k, v in over.items()]


def config(photos, out, **over):
    return load_config(PretrainConfig, None, overrides(photos, out, **over))


def test_resume_continues_exactly(photos, tmp_path, capsys):
    straight = pretrain(config(photos, tmp_path / "straight", max_steps=8, save_every=100))
    pretrain(config(photos, tmp_path / "split", max_steps=4, save_every=4))
    first = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")
    assert first["step"] == 4
    capsys.readouterr()
    # The same job, resumed to 8 steps (a max_steps change is the only difference; the
    # schedule up to step 4 is the same for 4 and 8 steps here: warmup 3, cosine from 3).
    pretrain(config(photos, tmp_path / "split", max_steps=8, save_every=100,
                    resume=str(tmp_path / "split" / "checkpoint-last.pt")))
    said = capsys.readouterr().out
    assert "other values of max_steps: 4 -> 8: the run continues under the new values" in said
    assert said.count("other values of") == 1 and "save_every" not in said
    losses_a = [r["loss"] for r in read_log(tmp_path / "straight" / "log.jsonl")]
    losses_b = [r["loss"] for r in read_log(tmp_path / "split" / "log.jsonl")]
    assert len(losses_a) == 8 and losses_a == losses_b  # bit for bit on CPU
    a = load_checkpoint(tmp_path / "straight" / "checkpoint-last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["steps"] == 8 and math.isfinite(straight["loss"])
    assert (tmp_path / "straight" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "straight" / "model.safetensors").is_file()


def test_lr_zero_means_zero_and_auto_means_scaled(photos, tmp_path):
    """optim.lr=0 freezes the weights (it once fell back to the scaled rate);
    optim.lr=auto (or null) is blr * effective batch / 256."""
    pretrain(config(photos, tmp_path / "zero", max_steps=2, **{"optim.lr": 0}))
    torch.manual_seed(0)  # the job's seed, before its model is built
    start = LoMaRPretrain(patch_size=16, depth=2, embed_dim=32, num_heads=2).state_dict()
    end = load_checkpoint(tmp_path / "zero" / "checkpoint-last.pt")["model"]
    assert all(torch.equal(start[k], end[k]) for k in start)
    assert [r["lr"] for r in read_log(tmp_path / "zero" / "log.jsonl")] == [0.0, 0.0]
    cfg = config(photos, tmp_path / "auto", **{"optim.lr": "auto", "optim.blr": 1e-3})
    assert cfg.optim.peak_lr(512) == 2e-3 and config(photos, tmp_path).optim.peak_lr(8) == 1e-3


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_steps_match_fp32(photos, tmp_path, amp):
    """The GPU's path (autocast) on the CPU: the first step's loss equals fp32's within
    the format's rounding, training goes on with finite losses."""
    fp32 = pretrain(config(photos, tmp_path / "fp32", max_steps=3, amp="false"))
    mixed = pretrain(config(photos, tmp_path / amp, max_steps=3, amp=amp))
    first = [read_log(tmp_path / run / "log.jsonl")[0]["loss"] for run in ("fp32", amp)]
    assert first[0] != first[1]  # autocast really ran
    assert abs(first[1] - first[0]) <= {"bf16": 4e-3, "fp16": 5e-4}[amp] * abs(first[0])
    assert math.isfinite(mixed["loss"]) and mixed["steps"] == fp32["steps"] == 3
    scaler = load_checkpoint(tmp_path / amp / "checkpoint-last.pt")["scaler"]
    assert (scaler is not None) == (amp == "fp16")  # loss scaling for fp16 only
    if amp == "fp16":
        assert scaler["scale"] > 0 and "_growth_tracker" in scaler


def test_fp16_resume_restores_the_loss_scale(photos, tmp_path):
    """The gradient scaler's state (scale, growth tracker) is part of exact resume."""
    pretrain(config(photos, tmp_path / "straight", max_steps=8, save_every=100, amp="fp16"))
    pretrain(config(photos, tmp_path / "split", max_steps=4, save_every=4, amp="fp16"))
    middle = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")["scaler"]
    assert middle["_growth_tracker"] == 4  # four good steps since the scale last moved
    pretrain(config(photos, tmp_path / "split", max_steps=8, save_every=100, amp="fp16",
                    resume=str(tmp_path / "split" / "checkpoint-last.pt")))
    losses = [[r["loss"] for r in read_log(tmp_path / run / "log.jsonl")]
              for run in ("straight", "split")]
    assert len(losses[0]) == 8 and losses[0] == losses[1]
    a, b = (load_checkpoint(tmp_path / run / "checkpoint-last.pt") for run in ("straight", "split"))
    assert a["scaler"] == b["scaler"] and a["scaler"]["_growth_tracker"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_then_resume(photos, tmp_path):
    out = tmp_path / "run"
    job = overrides(photos, out, max_steps=6, save_every=2)
    env = dict(os.environ, **{PAUSE_ENV: "2"})  # the write at step 4 pauses half-way
    proc = subprocess.Popen([sys.executable, "-m", "lomar", "pretrain"] + job, env=env,
                            stderr=subprocess.PIPE, text=True)
    paused, lines = False, []
    try:
        for line in iter(proc.stderr.readline, ""):  # "" when the run ends on its own
            lines.append(line)
            if "paused writing" in line:
                paused = True
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert paused, "the run ended before the paused checkpoint write:\n" + "".join(lines[-20:])
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".checkpoint-last.pt.*.tmp"))  # the interrupted write's leftover
    assert load_checkpoint(out / "checkpoint-last.pt")["step"] == 2  # the previous one, whole

    resumed = pretrain(config(photos, out, max_steps=6, save_every=2,
                              resume=str(out / "checkpoint-last.pt")))
    assert resumed["steps"] == 6 and not list(out.glob("*.tmp"))
    pretrain(config(photos, tmp_path / "straight", max_steps=6, save_every=100))
    want = read_log(tmp_path / "straight" / "log.jsonl")
    got = read_log(out / "log.jsonl")[-4:]  # steps 3-6, after the killed run's 1-4
    assert [r["step"] for r in got] == [3, 4, 5, 6]
    assert [r["loss"] for r in got] == [r["loss"] for r in want[2:]]
    a = load_checkpoint(out / "checkpoint-last.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "checkpoint-last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


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
    ({"resume": "/nonexistent/last.pt"}, ConfigError, "resume file not found"),
    ({"optim.lr": -1e-3}, ConfigError, r"optim.lr must be >= 0, or null/auto"),
    ({"amp": "fp8"}, ConfigError, r"amp must be bool or one of \['bf16', 'fp16'\], got 'fp8'"),
    ({"mask.window_size": 5}, ConfigError, r"mask.window_size 5 must be in \[1, 4\]"),
    ({"mask.mask_ratio": 1.0}, ConfigError, r"mask.mask_ratio must be in \(0, 1\)"),
    ({"mask.mask_ratio": 0.05}, ConfigError, "mask at least one of the 9 patches"),
    ({"data.input_size": 60}, ConfigError, "input_size 60 must be a multiple of the patch size 16"),
    ({"model": "vit_small_patch16"}, ConfigError, "model must be a LoMaR pretraining model"),
    ({"model": "lomar_vit_tiny_patch16"}, ConfigError, "known: lomar_vit_small_patch16"),
    ({"data.path": "/nonexistent/folder"}, FileNotFoundError, "data folder not found"),
    ({"data.mean": "[0.5, 0.5, 0.5]"}, ConfigError, "data.mean and data.std go together"),
    ({"data.mean": "[0.5, 0.5]", "data.std": "[0.2, 0.2]"}, ConfigError,
     r"data.mean needs one value per channel \(3"),
    ({"data.mean": "[0.5, 0.5, 0.5]", "data.std": "[0.2, 0, 0.2]"}, ConfigError,
     "data.std must be finite and > 0"),
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


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(photos, tmp_path):
    """Windows and masks are drawn per sample from (seed, step, index in the global batch),
    so splitting the batch over processes changes nothing but the order of the fp32
    gradient all-reduce: losses and weights agree to 1e-6 relative."""
    steps = dict(max_steps=4, save_every=100)  # 3 steps an epoch: crosses an epoch boundary
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    job = overrides(photos, tmp_path / "ddp", batch_size=2, **{"optim.accum_iter": 2}, **steps)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "lomar", "pretrain"] + job,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    pretrain(config(photos, tmp_path / "one", batch_size=4, **{"optim.accum_iter": 2}, **steps))
    ddp = read_log(tmp_path / "ddp" / "log.jsonl")
    one = read_log(tmp_path / "one" / "log.jsonl")
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [1, 2, 3, 4]
    for a, b in zip(ddp, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["lr"] == b["lr"]
    a = load_checkpoint(tmp_path / "ddp" / "checkpoint-last.pt")["model"]
    b = load_checkpoint(tmp_path / "one" / "checkpoint-last.pt")["model"]
    for name in a:
        if name.endswith("attn.qkv.bias"):
            # Softmax ignores the key bias: its gradient is 0 up to rounding, which Adam
            # scales to steps of up to lr (1e-3). Compare it loosely, the rest exactly.
            dim = a[name].numel() // 3
            torch.testing.assert_close(a[name][dim:2 * dim], b[name][dim:2 * dim], rtol=0,
                                       atol=4e-3)
            a[name][dim:2 * dim] = b[name][dim:2 * dim]
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7,
                                   msg=lambda m: f"{name}: {m}")


def test_pretraining_on_regions_of_tiled_files_resumes_exactly(tmp_path):
    """data.region_size: samples of a tiled pyramid (regions where the foreground is),
    through the job; a resumed run repeats the straight one."""
    from tiled_files import pyramid, write_pyramid

    slides = tmp_path / "slides"
    slides.mkdir()
    write_pyramid(slides / "a.tif", pyramid(size=(1024, 768), background=True), mpp=0.5)
    write_pyramid(slides / "b.tif", pyramid(size=(768, 1024), background=True, seed=1), mpp=0.5)
    common = ["data.region_size=256", "data.mpp=0.75", "data.min_foreground=0.4",
              "data.samples_per_file=4", "optim.warmup_epochs=0.5"]

    def run(out, *over):
        return pretrain(load_config(PretrainConfig, None, TINY_RUN + common + [
            f"data.path={slides}", f"output_dir={out}", *over]))

    run(tmp_path / "straight", "max_steps=4", "save_every=100")
    run(tmp_path / "split", "max_steps=2", "save_every=2")
    run(tmp_path / "split", "max_steps=4", "save_every=100",
        f"resume={tmp_path / 'split' / 'checkpoint-last.pt'}")
    losses = [[r["loss"] for r in read_log(tmp_path / run / "log.jsonl")]
              for run in ("straight", "split")]
    assert len(losses[0]) == 4 and losses[0] == losses[1] and all(map(math.isfinite, losses[0]))
    assert len(list((tmp_path / "straight" / "foreground_masks").glob("*.pt"))) == 2


def test_demo_slides_config_runs(tmp_path):
    """The gigapixel demo (lomar pretrain --config demo_slides), on a 4096 slide."""
    cfg = load_config(PretrainConfig, "demo_slides", [
        "data.demo_slide_size=4096", "data.region_size=512", "data.num_workers=0",
        "data.samples_per_file=8", "batch_size=4", "max_steps=2", "progress=false",
        "model_kwargs={depth: 1, embed_dim: 32, num_heads: 2}", "device=cpu",
        f"output_dir={tmp_path}"])
    summary = pretrain(cfg)
    assert summary["steps"] == 2 and math.isfinite(summary["loss"])
    assert (tmp_path / "demo_slide" / "slide.tif").is_file()


def test_demo_bands_config_runs(tmp_path):
    """The 6-band 16-bit demo (lomar pretrain --config demo_bands): bands picked by the
    names the scenes give them, its measured statistics, a few steps on 8 scenes."""
    cfg = load_config(PretrainConfig, "demo_bands", [
        "data.demo_images=8", "data.num_workers=0", "batch_size=4", "max_steps=2",
        "progress=false", "model_kwargs={depth: 1, embed_dim: 32, num_heads: 2, in_chans: 6}",
        "device=cpu", f"output_dir={tmp_path}"])
    summary = pretrain(cfg)
    assert summary["steps"] == 2 and math.isfinite(summary["loss"])
    assert len(list((tmp_path / "demo_bands").glob("scene_*.tif"))) == 8


@pytest.mark.parametrize("pipeline", ["windows", "full"])
def test_data_mean_and_std_normalise_the_run_and_bind_its_fine_tuning(photos, tmp_path, pipeline):
    """data.mean/std reach the model (windows: it normalises the uint8 windows) or the
    full crops, are stored with the run, and a fine-tune from its checkpoint must use the
    same: another normalisation is refused in one line, the same one runs."""
    from lomar.data import FullCrops, IMAGENET_MEAN
    from lomar.engine import FinetuneConfig, finetune
    from lomar.engine.pretrain import PretrainJob

    stats = {"data.mean": "[0.4, 0.5, 0.6]", "data.std": "[0.2, 0.25, 0.3]",
             "data.pipeline": pipeline}
    cfg = config(photos, tmp_path / "pre", max_steps=1, **stats)
    seen = {}
    real_build, real_call = PretrainJob.build_model, FullCrops.__call__

    def build(self, train_set):
        model, extra = real_build(self, train_set)
        seen["pixel"] = (model.pixel_mean.tolist(), model.pixel_std.tolist())
        return model, extra

    def crops(self, source):
        seen["crops"] = (self.mean, self.std)
        return real_call(self, source)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PretrainJob, "build_model", build)
        mp.setattr(FullCrops, "__call__", crops)
        pretrain(cfg)
    assert seen["pixel"] == ([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    if pipeline == "full":
        assert seen["crops"] == ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    checkpoint = tmp_path / "pre" / "checkpoint-last.pt"
    folder = tmp_path / "digits"
    tune = ["model=vit_small_patch16", "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
            "data.path=digits", "data.digits_size=32", "data.input_size=32", "epochs=1",
            "max_steps=1", "batch_size=4", "data.num_workers=0", "progress=false", "device=cpu",
            f"checkpoint={checkpoint}"]
    with pytest.raises(ConfigError, match=r"pretrained on pixels normalised with data.mean="
                                          r"\[0.4, 0.5, 0.6\].*not mean=\[0.485"):
        finetune(load_config(FinetuneConfig, None, tune + [f"output_dir={folder}/a"]))
    assert IMAGENET_MEAN[0] == 0.485
    summary = finetune(load_config(FinetuneConfig, None, tune + [
        f"output_dir={folder}/b", "data.mean=[0.4, 0.5, 0.6]", "data.std=[0.2, 0.25, 0.3]"]))
    assert math.isfinite(summary["loss"])


@pytest.mark.parametrize("bands,dtype,in_chans", [("all", "uint16", 6), ("[4, 1]", "uint16", 2),
                                                  ("all", "uint16", 1), ("all", "float32", 6)])
def test_pretraining_on_the_files_own_bands_and_bit_depth(tmp_path, bands, dtype, in_chans):
    """A 6-band (or 1-band) 16-bit folder: the windows keep every band and bit (uint16 to
    the model, value / 65535 then data.mean/std inside window_patchify; float32 files'
    windows normalised in the loader), a few steps run,
    the same run twice gives the same losses; a band layout the model does not take stops
    before training."""
    import numpy as np
    import tifffile

    folder = tmp_path / "scenes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    file_bands = 1 if in_chans == 1 else 6
    for i in range(6):  # 12-bit values in uint16, as many sensors write them
        shape = (80 + 8 * i, 96) + ((file_bands,) if file_bands > 1 else ())
        layout = {"planarconfig": "contig"} if file_bands > 1 else {}
        tifffile.imwrite(folder / f"{i}.tif", rng.integers(0, 4096, shape).astype(dtype),
                         photometric="minisblack", **layout)
    scale = 1 if dtype == "float32" else 65535  # float files' statistics in their own units
    stats = {"data.bands": bands, "model_kwargs": f"{{depth: 2, embed_dim: 32, num_heads: 2, "
             f"in_chans: {in_chans}}}", "data.mean": str([2048 / scale] * in_chans),
             "data.std": str([1200 / scale] * in_chans)}
    run = config(folder, tmp_path / "a", max_steps=4, save_every=2, **stats)
    summary = pretrain(run)
    assert summary["steps"] == 4 and math.isfinite(summary["loss"])
    pretrain(config(folder, tmp_path / "b", max_steps=4, save_every=2, **stats))
    assert [r["loss"] for r in read_log(tmp_path / "a" / "log.jsonl")] == \
        [r["loss"] for r in read_log(tmp_path / "b" / "log.jsonl")]  # items seeded: repeatable
    with pytest.raises(ConfigError, match="needs data.bands 'all' or a list"):
        config(folder, tmp_path / "c", **{**stats, "data.bands": "rgb"})
    if bands == "all" and in_chans == 6:
        wrong = {**stats, "model_kwargs": "{depth: 2, embed_dim: 32, num_heads: 2, in_chans: 4}",
                 "data.mean": "[0.1, 0.1, 0.1, 0.1]", "data.std": "[0.1, 0.1, 0.1, 0.1]"}
        with pytest.raises(ConfigError, match=r"data.bands=all with model_kwargs.in_chans = 4: "
                                              r".*0.tif: 6 band\(s\) where the run takes 4"):
            pretrain(config(folder, tmp_path / "d", max_steps=1, **wrong))
        without_stats = {k: v for k, v in stats.items() if k not in ("data.mean", "data.std")}
        with pytest.raises(ConfigError, match="need their own data.mean"):
            config(folder, tmp_path / "e", **without_stats)


@pytest.mark.parametrize("pipeline,tiled", [("windows", True), ("full", True), ("full", False)])
def test_own_bands_through_tiled_regions_and_the_full_pipeline(tmp_path, pipeline, tiled):
    """data.bands on tiled files (regions read tile by tile) and through the full-crop
    pipeline: a 6-band uint16 source, a few steps, the same losses twice."""
    import numpy as np
    import tifffile

    folder = tmp_path / "scenes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2 if tiled else 4):
        pixels = rng.integers(0, 4096, (160, 192, 6), dtype=np.uint16)
        tifffile.imwrite(folder / f"{i}.tif", pixels, photometric="minisblack",
                         planarconfig="contig", **({"tile": (64, 64)} if tiled else {}))
    over = {"data.bands": "all", "data.pipeline": pipeline, "mask.window_sampling":
            "image" if pipeline == "windows" else "batch",
            "model_kwargs": "{depth: 2, embed_dim: 32, num_heads: 2, in_chans: 6}",
            "data.mean": str([0.03] * 6), "data.std": str([0.02] * 6), "max_steps": 2}
    if tiled:
        over.update({"data.region_size": 96, "data.samples_per_file": 4})
    losses = []
    for out in ("a", "b"):
        summary = pretrain(config(folder, tmp_path / out, **over))
        assert summary["steps"] == 2 and math.isfinite(summary["loss"])
        losses.append([r["loss"] for r in read_log(tmp_path / out / "log.jsonl")])
    assert losses[0] == losses[1]
