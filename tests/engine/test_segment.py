"""lomar segment on a tiny backbone and a tiny synthetic set: bad configurations
refused before work naming the key, backbone weights from a pretraining
checkpoint, mIoU over the val set, exact resume, the figures, the report and the
CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lomar
from lomar.checkpoint import load_checkpoint, save_checkpoint
from lomar.cli import main
from lomar.config import ConfigError, load_config
from lomar.engine.segment import SegmentConfig, segment
from lomar.models import create_model
from lomar.reports import report
from lomar.run_log import RunLog, read_log
from lomar.segmentation.synthetic import build_demo_segmentation

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_demo_segmentation(tmp_path_factory.mktemp("seg"), num_train=8, num_val=3,
                                   size=64)


def config(data_dir, out, **over):
    base = ["model=vitdet_small_patch16", "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
            "window_size=2", "data.path=synthetic", f"data.synthetic_dir={data_dir}",
            "data.synthetic_train=8", "data.synthetic_val=3", "data.synthetic_size=64",
            "data.crop_size=64", "data.num_workers=0", "head.in_channels=16",
            "head.channels=16", "head.aux_channels=8", "batch_size=2", "log_every=1",
            "optim.lr=0.001", "progress=false", "figure_images=2", f"output_dir={out}",
            "device=cpu"]
    return load_config(SegmentConfig, None, base + [f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("override,exc,match", [
    ({"model": "vit_small_patch16"}, ConfigError, "model must be a detection backbone"),
    ({"data.crop_size": 48}, ConfigError, "data.crop_size 48 must be a positive multiple of 32"),
    ({"global_blocks": "[2]"}, ConfigError, r"global_blocks must be block indices in \[0, 1\]"),
    ({"data.scale_range": "[2.0, 1.0]"}, ConfigError, "data.scale_range must be"),
    ({"head.pool_scales": "[]"}, ConfigError, "head.pool_scales must be one or more"),
    ({"head.dropout": 1.0}, ConfigError, r"head.dropout must be in \[0, 1\), got 1.0"),
    ({"head.in_channels": 6}, ConfigError, "head.in_channels must be a positive multiple of 4"),
    ({"head.aux_weight": -1}, ConfigError, "head.aux_weight must be >= 0"),
    ({"eval_stride": 65}, ConfigError, r"eval_stride must be in \[1, data.crop_size 64\]"),
    ({"optim.layer_decay": 0}, ConfigError, r"optim.layer_decay must be in \(0, 1\]"),
    ({"data.mean": "[0.5]", "data.std": "[0.5]"}, ConfigError,
     "data.mean needs one value per channel"),
    ({"checkpoint": "/nonexistent/ckpt.pt"}, ConfigError, "checkpoint file not found"),
    ({"data.path": ""}, ConfigError, "data.path is required"),
    ({"batch_size": 1}, ConfigError, "batch_size 1 leaves the pyramid pooling's 1x1 branch"),
    ({"data.path": "/nonexistent/ade"}, FileNotFoundError, "segmentation data folder not found"),
])
def test_bad_configurations_fail_before_work(data_dir, tmp_path, override, exc, match):
    with pytest.raises(exc, match=match):
        segment(config(data_dir, tmp_path / "out", max_steps=1, **override))
    assert not (tmp_path / "out" / "checkpoint-last.pt").exists()


def test_backbone_from_a_pretraining_checkpoint(data_dir, tmp_path, capsys):
    torch.manual_seed(0)
    state = create_model("lomar_vit_small_patch16", **TINY).state_dict()
    path = save_checkpoint(tmp_path / "pre.pt", {"model": state})
    summary = segment(config(data_dir, tmp_path / "run", max_steps=1, checkpoint=str(path),
                             figure_images=0))
    out = capsys.readouterr().out
    assert "backbone: 28 tensors loaded (lomar checkpoint); new: pyramid.* (" in out
    assert "unused: cls_token, encoder_pred.bias, encoder_pred.weight, mask_token, norm.bias, " \
           "norm.weight; UperNet + FCN heads: new" in out
    assert "5 classes, 8 train / 3 val images" in out
    assert 0 <= summary["miou"] <= 100 and summary["best_miou"] == summary["miou"]
    # One step at the warmup's lr 0: the backbone is still the checkpoint's encoder.
    trained = load_checkpoint(tmp_path / "run" / "checkpoint-last.pt")["model"]
    encoder = [k for k in state if k.startswith(("patch_embed.", "blocks."))]
    assert all(torch.equal(trained[f"backbone.{k}"], state[k]) for k in encoder)


def test_backbone_from_an_mae_checkpoint(data_dir, tmp_path, capsys):
    """MAE's encoder names are ours; abs_pos_embed gives its fixed sin-cos positions
    (and no iRPE tables): every encoder tensor loads."""
    torch.manual_seed(0)
    mae = create_model("mae_vit_base_patch16_dec512d8b", patch_size=16, **TINY,
                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    path = save_checkpoint(tmp_path / "mae.pt", {"model": mae.state_dict()})
    segment(config(data_dir, tmp_path / "run", max_steps=1, checkpoint=str(path),
                   figure_images=0, model_kwargs="{depth: 2, embed_dim: 32, num_heads: 2, "
                                                 "abs_pos_embed: true}"))
    out = capsys.readouterr().out
    assert "backbone: 26 tensors loaded (lomar checkpoint); new: pyramid.* (" in out
    assert "unused: cls_token, decoder_" in out
    trained = load_checkpoint(tmp_path / "run" / "checkpoint-last.pt")["model"]
    assert torch.equal(trained["backbone.blocks.1.mlp.fc2.weight"],
                       mae.state_dict()["blocks.1.mlp.fc2.weight"])


def test_resume_continues_exactly(data_dir, tmp_path):
    # 4 steps per epoch, warmup of 2 steps: both parts see the same lr at steps 0-1.
    common = {"optim.warmup_epochs": 0.5, "eval_every": 2, "drop_path": 0.2}
    straight = segment(config(data_dir, tmp_path / "straight", max_steps=4, **common))
    segment(config(data_dir, tmp_path / "split", max_steps=2, **common))
    assert load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")["step"] == 2
    segment(config(data_dir, tmp_path / "split", max_steps=4,
                   resume=str(tmp_path / "split" / "checkpoint-last.pt"), **common))
    logs = [read_log(tmp_path / run / "log.jsonl") for run in ("straight", "split")]
    for key in ("loss", "loss_seg", "loss_aux", "miou", "pixel_accuracy"):
        values = [[(r["step"], r[key]) for r in log if key in r] for log in logs]
        assert values[0] and values[0] == values[1], key  # bit for bit on CPU
    assert [r["step"] for r in logs[0] if "miou" in r] == [2, 4]
    a = load_checkpoint(tmp_path / "straight" / "checkpoint-last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extra"] == b["extra"] and a["extra"]["best_miou"] == straight["best_miou"]
    for name in ("checkpoint-best.pt", "model.safetensors"):
        assert (tmp_path / "straight" / name).is_file()
    for name in ("loss.png", "miou.png", "class_iou.png", "predictions.png"):
        assert (tmp_path / "straight" / name).read_bytes()[:4] == b"\x89PNG", name
    per_class = json.loads((tmp_path / "straight" / "class_iou.json").read_text())
    assert per_class["step"] == 4 and len(per_class["iou"]) == len(per_class["classes"]) == 5
    finite = [v for v in per_class["iou"] if v is not None]
    assert per_class["miou"] == pytest.approx(sum(finite) / len(finite))
    assert straight["miou"] == pytest.approx(per_class["miou"])


def test_evaluation_is_the_metric_over_the_whole_val_set(data_dir, tmp_path):
    """The job's mIoU equals SegmentationMetrics over sliding-window predictions of the
    val images made here from the saved model."""
    from lomar.engine.segment import build_model, predict_logits
    from lomar.segmentation import SegmentationFolder, SegmentationMetrics

    cfg = config(data_dir, tmp_path / "run", max_steps=2, figure_images=0, eval_stride=32)
    summary = segment(cfg)
    val = SegmentationFolder(data_dir, "images/validation", "annotations/validation", False,
                             crop_size=64)
    model, _ = build_model(cfg, val.num_classes)
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoint-last.pt")["model"])
    model.eval()
    metrics = SegmentationMetrics(val.num_classes, val.ignore_index)
    for image, mask in (val[i] for i in range(len(val))):
        metrics.update(predict_logits(model, image, mask.shape, cfg, "cpu").argmax(0), mask)
    assert summary["miou"] == pytest.approx(100 * metrics.compute()["miou"], abs=1e-9)


def test_bf16_autocast_step(data_dir, tmp_path):
    """The GPU's path (bf16 autocast, training and sliding-window evaluation) on the CPU."""
    for amp in ("false", "bf16"):
        segment(config(data_dir, tmp_path / amp, max_steps=1, amp=amp, figure_images=0))
    first = [read_log(tmp_path / amp / "log.jsonl")[0] for amp in ("false", "bf16")]
    assert first[0]["loss"] != first[1]["loss"]
    assert abs(first[1]["loss"] - first[0]["loss"]) <= 2e-2 * abs(first[0]["loss"])
    miou = [r["miou"] for r in read_log(tmp_path / "bf16" / "log.jsonl") if "miou" in r]
    assert miou and 0 <= miou[-1] <= 100


def test_segment_report(tmp_path, capsys):
    classes = ["sky", "road", "car"]
    for run, values, iou in (("a", [20.0, 40.0, 35.0], [50.0, 30.0, 25.0]),
                             ("b", [10.0, 15.0, 25.0], [40.0, 35.0, None])):
        log = RunLog(tmp_path / run, tensorboard=False)
        for i, miou in enumerate(values, 1):
            log.log(i * 10, loss=1.0)
            log.log(i * 10, miou=miou, pixel_accuracy=2 * miou)
        log.close()
        (tmp_path / run / "class_iou.json").write_text(json.dumps(
            {"step": 30, "classes": classes, "iou": iou, "miou": values[-1]}))
    assert main(["report", "segment", str(tmp_path / "cmp.png"), f"pre={tmp_path / 'a'}",
                 f"rand={tmp_path / 'b'}"]) == 0
    out = capsys.readouterr().out
    assert "pre: step 30: mIoU 35.00, pixel accuracy 70.00 (best mIoU 40.00)" in out
    assert "pre - rand: +10.00 mIoU (points, last evaluation); higher IoU on 1 of 2 classes" in out
    for name in ("cmp.png", "cmp_class_iou.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="report segment: no miou"):
        report("segment", str(tmp_path / "x.png"), {"untrained": str(tmp_path / "c")})


def test_cli(capsys):
    assert main(["segment", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "layer_decay: 0.65" in out and "pool_scales:" in out and "crop_size: 512" in out
    assert main(["segment", "head.channelz=4"]) == 2
    assert "unknown key head.channelz" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["demo_segment.yaml", "segment_upernet_base_512.yaml"])
def test_shipped_configs_load(name):
    path = Path(lomar.__file__).parent / "configs" / name
    cfg = load_config(SegmentConfig, path, ["checkpoint=null"])
    assert cfg.model.startswith("vitdet_") and cfg.data.crop_size % 32 == 0
    assert cfg.head.aux_weight == 0.4


DDP_EVAL = textwrap.dedent("""
    import sys, torch
    from lomar.config import load_config
    from lomar.distributed import setup, cleanup
    from lomar.engine.segment import SegmentConfig, _datasets, build_model, evaluate
    cfg = load_config(SegmentConfig, sys.argv[1], [])
    info = setup("cpu")
    _, val = _datasets(cfg, info)
    torch.manual_seed(0)
    model, _ = build_model(cfg, val.num_classes)
    scores, iou = evaluate(model, val, cfg, info)
    if info.is_main:
        torch.save({"scores": scores, "iou": iou, "world": info.world_size}, sys.argv[2])
    cleanup()
""")


def test_two_process_evaluation_equals_one_process(data_dir, tmp_path):
    """Each process scores every second val image (3 images: 2 and 1); the summed
    confusion matrices give the one-process scores exactly."""
    from lomar.config import save_config
    from lomar.distributed import DistInfo
    from lomar.engine.segment import _datasets, build_model, evaluate

    cfg = config(data_dir, tmp_path / "out", max_steps=1, eval_stride=32)
    save_config(cfg, tmp_path / "cfg.yaml")
    (tmp_path / "eval.py").write_text(DDP_EVAL)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(tmp_path / "eval.py"),
                          str(tmp_path / "cfg.yaml"), str(tmp_path / "ddp.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    _, val = _datasets(cfg, info)
    torch.manual_seed(0)
    model, _ = build_model(cfg, val.num_classes)
    scores, iou = evaluate(model, val, cfg, info)
    assert ddp["world"] == 2 and ddp["scores"] == scores
    assert torch.equal(torch.tensor(ddp["iou"]).nan_to_num(-1), torch.tensor(iou).nan_to_num(-1))
