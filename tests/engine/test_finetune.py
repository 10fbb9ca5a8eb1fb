"""lomar finetune on a tiny encoder and a tiny synthetic ImageFolder: bad
configurations refused before work, layer-decay groups, encoder init from our and
the authors' checkpoints, exact resume, the linear probe's frozen encoder, the
top-k metric and the digits demo set."""

import argparse
import hashlib
import math

import pytest
import torch
from PIL import Image

from lomar.checkpoint import export_safetensors, load_checkpoint, save_checkpoint
from lomar.cli import main
from lomar.config import ConfigError, load_config
from lomar.data import build_demo_digits, find_images
from lomar.engine import FinetuneConfig, finetune
from lomar.engine.finetune import set_train_mode, topk_correct
from lomar.engine.init_weights import load_encoder_weights
from lomar.engine.param_groups import no_weight_decay_names, param_groups_layer_decay
from lomar.models import create_model
from lomar.reports import report
from lomar.run_log import RunLog, read_log

from image_folders import write_folder

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_folder(root / "train", 4, seed=0)  # 12 images: 3 steps of 4 per epoch
    write_folder(root / "val", 2, seed=1)
    return root


def config(folder, out, **over):
    base = ["model=vit_small_patch16", "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
            f"data.path={folder}", "data.input_size=32", "data.num_workers=0",
            "batch_size=4", "log_every=1", "optim.lr=0.001", "progress=false",
            f"output_dir={out}", "device=cpu"]
    return load_config(FinetuneConfig, None, base + [f"{k}={v}" for k, v in over.items()])


def pretrain_state(seed=0):
    torch.manual_seed(seed)
    return create_model("lomar_vit_small_patch16", **TINY).state_dict()


@pytest.mark.parametrize("override,exc,match", [
    ({"model": "lomar_vit_small_patch16"}, ConfigError, "model must be a fine-tuning encoder"),
    ({"model": "vit_tiny_patch16"}, ConfigError, "known: vit_small_patch16"),
    ({"data.input_size": 30}, ConfigError, "input_size 30 must be a multiple of the patch size 16"),
    ({"checkpoint": "/nonexistent/ckpt.pt"}, ConfigError, "checkpoint file not found"),
    ({"resume": "/nonexistent/last.pt"}, ConfigError, "resume file not found"),
    ({"optim.layer_decay": 1.5}, ConfigError, r"optim.layer_decay must be in \(0, 1\], got 1.5"),
    ({"batch_size": 3}, ConfigError, "batch_size must be even with mixup"),
    ({"data.path": "/nonexistent/folder"}, FileNotFoundError, "data folder not found"),
    ({"data.val_split": "train/red"}, ConfigError, "differ from those of"),
])
def test_bad_configurations_fail_before_work(folder, tmp_path, override, exc, match):
    with pytest.raises(exc, match=match):
        finetune(config(folder, tmp_path / "out", max_steps=1, **override))
    assert not (tmp_path / "out" / "checkpoint-last.pt").exists()


def test_empty_or_flat_data_folder(folder, tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images .* found under"):
        finetune(config(tmp_path / "empty", tmp_path / "out", max_steps=1))
    with pytest.raises(ConfigError, match="must hold one sub-folder per class"):
        finetune(config(folder / "train", tmp_path / "out", max_steps=1,
                        **{"data.train_split": "red", "data.val_split": "green"}))


def test_layer_decay_groups():
    model = create_model("vit_small_patch16", depth=3, embed_dim=32, num_heads=2, num_classes=5)
    groups = param_groups_layer_decay(model, 0.05, 0.5, no_weight_decay_names(model))
    where = {id(p): g for g in groups for p in g["params"]}
    assert len(where) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    expected_scale = {"patch_embed.proj.weight": 0.5 ** 4, "cls_token": 0.5 ** 4,
                      "blocks.0.attn.qkv.weight": 0.5 ** 3, "blocks.1.mlp.fc1.bias": 0.5 ** 2,
                      "blocks.2.attn.rpe_table": 0.5, "fc_norm.weight": 1.0, "head.weight": 1.0}
    params = dict(model.named_parameters())
    for name, scale in expected_scale.items():
        assert where[id(params[name])]["lr_scale"] == pytest.approx(scale), name
    no_decay = {n for n, p in params.items() if where[id(p)]["weight_decay"] == 0}
    assert no_decay == {n for n in params if n.endswith(("bias", "cls_token", "rpe_table"))
                        or "norm" in n}
    assert all(where[id(params[n])]["weight_decay"] == 0.05 for n in params if n not in no_decay)


@pytest.mark.parametrize("fmt", ["checkpoint", "safetensors", "official"])
def test_load_pretraining_weights_into_the_encoder(tmp_path, fmt):
    state = pretrain_state()
    if fmt == "checkpoint":
        path = save_checkpoint(tmp_path / "checkpoint-last.pt", {"model": state, "step": 3})
    elif fmt == "safetensors":
        path = export_safetensors(state, tmp_path / "model.safetensors")
    else:  # the authors' layout: (heads, head_dim, buckets) tables, pos_embed, their args
        theirs = {k.replace("attn.rpe_table", "attn.rpe_k.lookup_table_weight"):
                  v.t()[None] if k.endswith("rpe_table") else v for k, v in state.items()}
        theirs["pos_embed"] = torch.zeros(1, 5, 32)
        path = tmp_path / "lomar_official.pth"
        torch.save({"model": theirs, "args": argparse.Namespace(lr=1e-3)}, path)
    model = create_model("vit_small_patch16", **TINY, num_classes=3)
    report = load_encoder_weights(model, path)
    own = model.state_dict()
    encoder = [k for k in own if not k.startswith(("head.", "fc_norm."))]
    assert report.loaded == sorted(encoder)
    assert all(torch.equal(own[k], state[k]) for k in encoder)
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    unused = {"mask_token", "norm.weight", "norm.bias", "encoder_pred.weight", "encoder_pred.bias"}
    assert set(report.unused) == unused  # convert_official drops their unused pos_embed
    assert report.source == ("official" if fmt == "official" else "lomar")


def test_load_refuses_unrelated_or_misfitting_weights(tmp_path):
    model = create_model("vit_small_patch16", **TINY, num_classes=3)
    other = save_checkpoint(tmp_path / "other.pt", {"model": {"conv1.weight": torch.ones(2)}})
    with pytest.raises(ValueError, match="none of its 1 tensors match"):
        load_encoder_weights(model, other)
    torch.manual_seed(0)
    wider = create_model("lomar_vit_small_patch16", depth=2, embed_dim=64, num_heads=2)
    path = save_checkpoint(tmp_path / "wide.pt", {"model": wider.state_dict()})
    with pytest.raises(ValueError, match="does not fit the model"):
        load_encoder_weights(model, path)


def test_resume_continues_exactly(folder, tmp_path):
    # The full recipe: RandAugment, random erasing, mixup/cutmix, drop path, smoothing.
    # 3 steps per epoch; warmup ends at step 3, so steps 0-3 see the same lr whether
    # the run is 4 or 6 steps long; the evaluation at the end of epoch 1 is in part one.
    common = {"optim.warmup_epochs": 1, "aug.reprob": 0.5}
    straight = finetune(config(folder, tmp_path / "straight", max_steps=6, **common))
    finetune(config(folder, tmp_path / "split", max_steps=4, save_every=4, **common))
    assert load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")["step"] == 4
    finetune(config(folder, tmp_path / "split", max_steps=6, save_every=100,
                    resume=str(tmp_path / "split" / "checkpoint-last.pt"), **common))
    logs = [read_log(tmp_path / run / "log.jsonl") for run in ("straight", "split")]
    losses = [[r["loss"] for r in log if "loss" in r] for log in logs]
    vals = [[(r["step"], r["val_top1"], r["val_loss"]) for r in log if "val_top1" in r]
            for log in logs]
    assert len(losses[0]) == 6 and losses[0] == losses[1]  # bit for bit on CPU
    # Evaluations at epoch ends (3, 6); part one also evaluated where it stopped (4).
    assert [v[0] for v in vals[0]] == [3, 6] and [v[0] for v in vals[1]] == [3, 4, 6]
    assert vals[0] == [v for v in vals[1] if v[0] != 4]
    a = load_checkpoint(tmp_path / "straight" / "checkpoint-last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extra"]["best_top1"] == straight["best_top1"] == max(v[1] for v in vals[0])
    assert (tmp_path / "straight" / "checkpoint-best.pt").is_file()
    assert (tmp_path / "straight" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_bf16_autocast_steps_and_evaluation_match_fp32(folder, tmp_path):
    """The GPU's path (bf16 autocast, also in the evaluation) on the CPU."""
    runs = {amp: finetune(config(folder, tmp_path / str(amp), max_steps=3, amp=amp))
            for amp in ("false", "bf16")}
    logs = {amp: read_log(tmp_path / amp / "log.jsonl") for amp in runs}
    first = [next(r["loss"] for r in logs[amp] if "loss" in r) for amp in runs]
    assert first[0] != first[1] and abs(first[1] - first[0]) <= 4e-3 * abs(first[0])
    vals = [next(r["val_loss"] for r in logs[amp] if "val_loss" in r) for amp in runs]
    assert math.isfinite(vals[1]) and abs(vals[1] - vals[0]) <= 2e-2 * abs(vals[0])


def test_linear_probe_trains_only_the_head(folder, tmp_path):
    init = pretrain_state()
    path = save_checkpoint(tmp_path / "pre.pt", {"model": init})
    summary = finetune(config(folder, tmp_path / "probe", max_steps=3, linear_probe=True,
                              checkpoint=str(path), **{"optim.lr": 0.1}))
    after = load_checkpoint(tmp_path / "probe" / "checkpoint-last.pt")["model"]
    for name in after:
        if name.startswith("head."):
            continue
        expected = init.get(name)
        if expected is None:  # fc_norm: new, frozen at its initial ones/zeros
            expected = torch.ones(32) if name.endswith("weight") else torch.zeros(32)
        assert torch.equal(after[name], expected), name
    assert sorted(k for k in after if k.startswith("head.")) == [
        "head.0.num_batches_tracked", "head.0.running_mean", "head.0.running_var",
        "head.1.bias", "head.1.weight"]  # BatchNorm1d without affine parameters + Linear
    assert int(after["head.0.num_batches_tracked"]) == 3
    assert summary["steps"] == 3 and 0 <= summary["val_top1"] <= 100


def test_set_train_mode_keeps_a_probed_encoder_in_eval():
    model = create_model("vit_small_patch16", **TINY, num_classes=3, drop_path_rate=0.1)
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(32, affine=False), model.head)
    set_train_mode(model, linear_probe=True)
    assert all(m.training == name.startswith("head") for name, m in model.named_modules() if name)
    set_train_mode(model, linear_probe=False)
    assert all(m.training for m in model.modules())


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.3, 0.2, 0.5],    # target 1: top-1
                           [0.8, 0.1, 0.7, 0.6, 0.5, 0.4],    # target 3: 3rd, in top-5
                           [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]])   # target 5: last, missed
    assert topk_correct(logits, torch.tensor([1, 3, 5]), ks=(1, 3, 5)) == [1, 2, 2]
    # k larger than the number of classes: every row counts
    assert topk_correct(logits[:, :3], torch.tensor([0, 1, 2]), ks=(1, 5)) == [0, 3]


def test_demo_digits(tmp_path):
    a = build_demo_digits(tmp_path / "a", size=16, seed=0)
    b = build_demo_digits(tmp_path / "b", size=16, seed=0)
    train, train_labels, classes = find_images(a / "train")
    val, val_labels, val_classes = find_images(a / "val")
    assert classes == val_classes == [str(d) for d in range(10)]
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert sorted(set(train_labels)) == sorted(set(val_labels)) == list(range(10))
    assert not {p.name for p in train} & {p.name for p in val}
    with Image.open(val[0]) as img:
        assert img.size == (16, 16) and img.mode == "RGB"

    def digest(root):
        files = sorted(p for p in root.rglob("*.png"))
        return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes()
                                       for p in files)).hexdigest()
    assert digest(a) == digest(b)


def test_cli(capsys):
    assert main(["finetune", "--help-config"]) == 0
    assert "layer_decay: 0.65" in capsys.readouterr().out
    assert main(["finetune", "aug.mixupp=1"]) == 2
    assert "unknown key aug.mixupp" in capsys.readouterr().err


def test_probe_report(tmp_path, capsys):
    for run, accs in (("a", [50.0, 70.0, 65.0]), ("b", [40.0, 55.0, 60.0])):
        log = RunLog(tmp_path / run, tensorboard=False)
        for epoch, acc in enumerate(accs, 1):
            log.log(epoch * 10, loss=1.0, epoch=float(epoch))
            log.log(epoch * 10, val_top1=acc, epoch=float(epoch))
        log.close()
    assert main(["report", "probe", str(tmp_path / "cmp.png"), f"pre={tmp_path / 'a'}",
                              f"rand={tmp_path / 'b'}"]) == 0
    out = capsys.readouterr().out
    assert "pre: final top-1 65.00%, best 70.00%" in out and "pre - rand: +5.00 points" in out
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(ValueError, match="report probe: no val_top1"):
        report("probe", str(tmp_path / "x.png"), {"untrained": str(tmp_path / "c")})


@pytest.mark.parametrize("in_chans", [1, 6])
def test_rgb_weights_adapt_the_patch_embedding_to_other_bands(tmp_path, in_chans):
    """An RGB checkpoint into a model of other bands: the patch embedding's channels are
    repeated and rescaled (timm's rule: the response to a grey image is kept), the
    report says so; every other tensor loads as it is."""
    state = pretrain_state()
    path = save_checkpoint(tmp_path / "rgb.pt", {"model": state})
    model = create_model("vit_small_patch16", **TINY, num_classes=3, in_chans=in_chans)
    report = load_encoder_weights(model, path)
    assert f"adapted from 3 to {in_chans} input channels" in report.summary()
    w, rgb = model.state_dict()["patch_embed.proj.weight"], state["patch_embed.proj.weight"]
    assert w.shape[1] == in_chans and "patch_embed.proj.weight" in report.loaded
    grey = torch.rand(1, 1, 16, 16)  # the same grey image in every band
    response = torch.nn.functional.conv2d(grey.expand(1, in_chans, 16, 16), w)
    expected = torch.nn.functional.conv2d(grey.expand(1, 3, 16, 16), rgb)
    torch.testing.assert_close(response, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"],
                       state["blocks.0.attn.qkv.weight"])


def _band_folder(root, bands=6, dtype="uint16"):
    """An ImageFolder of (bands)-band 16-bit TIFFs, two classes told apart by their
    level (12-bit values, as many sensors write them)."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for label in range(2):
            (root / split / f"c{label}").mkdir(parents=True)
            for i in range(count):
                shape = (40 + 4 * i, 48, bands) if bands > 1 else (40 + 4 * i, 48)
                pixels = rng.integers(0, 2048, shape) + 2048 * label
                tifffile.imwrite(root / split / f"c{label}" / f"{i}.tif",
                                 pixels.astype(dtype), photometric="minisblack",
                                 **({"planarconfig": "contig"} if bands > 1 else {}))
    return root


@pytest.mark.parametrize("bands,in_chans", [("all", 6), ("[5, 0]", 2), ("all", 1)])
def test_fine_tuning_on_the_bands_a_checkpoint_was_pretrained_on(tmp_path, bands, in_chans):
    """Pretrain on a 6-band (or 1-band) uint16 folder, then fine-tune and probe from the
    result on the same bands: the run reads every band and bit (value / 65535, then the
    bands' mean/std) and trains; other bands, RGB-only augmentations and a folder of
    another band count are refused in one line before any work."""
    from lomar.engine import PretrainConfig, pretrain

    root = _band_folder(tmp_path / "scenes", bands=1 if in_chans == 1 else 6)
    stats = [f"data.bands={bands}", f"data.mean={[0.03] * in_chans}",
             f"data.std={[0.02] * in_chans}"]
    kwargs = f"model_kwargs={{depth: 2, embed_dim: 32, num_heads: 2, in_chans: {in_chans}}}"
    pretrain(load_config(PretrainConfig, None, [
        "model=lomar_vit_small_patch16", kwargs, f"data.path={root / 'train'}",
        "data.input_size=32", "data.num_workers=0", "mask.window_size=2", "mask.num_windows=1",
        "batch_size=4", "max_steps=2", "progress=false", "device=cpu",
        f"output_dir={tmp_path / 'pre'}", *stats]))
    checkpoint = tmp_path / "pre" / "checkpoint-last.pt"
    tune = {"model_kwargs": kwargs.split("=", 1)[1], "checkpoint": checkpoint, "max_steps": 3,
            "aug.auto_augment": "null", **dict(s.split("=", 1) for s in stats)}
    summary = finetune(config(root, tmp_path / "ft", **tune))
    assert math.isfinite(summary["loss"]) and 0 <= summary["best_top1"] <= 100
    summary = finetune(config(root, tmp_path / "probe", **tune, linear_probe="true"))
    assert math.isfinite(summary["loss"])
    with pytest.raises(ConfigError, match=rf"pretrained on data.bands={bands.replace('[', '.')}"
                                          rf".*not data.bands=rgb \(3 band"):
        finetune(config(root, tmp_path / "x", checkpoint=checkpoint, max_steps=1))
    with pytest.raises(ConfigError, match="aug.auto_augment=rand-m9-mstd0.5-inc1 is a colour-"
                                          "photo augmentation"):
        config(root, tmp_path / "y", **{**tune, "aug.auto_augment": "rand-m9-mstd0.5-inc1"})
    if in_chans == 6:
        other = _band_folder(tmp_path / "four", bands=4)
        with pytest.raises(ConfigError, match=r"0.tif: 4 band\(s\) where the run takes 6"):
            finetune(config(other, tmp_path / "z", **tune))


def test_band_eval_transform_is_timms_resize_and_centre_crop(tmp_path):
    """On 8-bit RGB the band transform's evaluation crop is timm's (resize the short
    side to size / crop_pct, centre crop), within one level of rounding."""
    import numpy as np
    from timm.data import create_transform
    from torchvision.transforms import v2

    from lomar.data.band_transforms import BandEvalTransform

    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    ours = BandEvalTransform(32, [0, 0, 0], [1, 1, 1], bands="all", crop_pct=0.875)(path)
    theirs = v2.Compose([v2.ToPILImage(), create_transform(32, interpolation="bicubic",
                                                           crop_pct=0.875, mean=(0, 0, 0),
                                                           std=(1, 1, 1))])(
        torch.from_numpy(rgb).permute(2, 0, 1))
    assert ours.shape == theirs.shape == (3, 32, 32)
    assert (ours - theirs).abs().max() <= 2 / 255 + 1e-6
