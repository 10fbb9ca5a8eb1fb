"""lomar detect on a tiny backbone and a tiny synthetic COCO set: the synthetic set,
COCO reading with scale jitter and flips, COCO AP, bad configurations refused
before work, backbone weights from a pretraining checkpoint, exact resume, the
report and the CLI."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lomar.checkpoint import load_checkpoint, save_checkpoint
from lomar.cli import main
from lomar.config import ConfigError, load_config
from lomar.detection import (
    CocoDetection,
    build_demo_detection,
    coco_ap,
    coco_results,
    load_coco,
)
from lomar.detection.coco import _tight_boxes
from lomar.engine import DetectConfig, detect
from lomar.models import create_model
from lomar.reports import report
from lomar.run_log import RunLog, read_log

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
SYNTHETIC = {"num_train": 8, "num_val": 4, "size": 64, "digit_sizes": (12, 28)}


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    return build_demo_detection(tmp_path_factory.mktemp("coco"), **SYNTHETIC)


def config(coco_dir, out, **over):
    base = ["model=vitdet_small_patch16", "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
            "window_size=2", "data.path=synthetic", f"data.synthetic_dir={coco_dir}",
            "data.synthetic_train=8", "data.synthetic_val=4", "data.synthetic_size=64",
            "data.synthetic_digit_sizes=[12, 28]", "data.input_size=64", "data.num_workers=0",
            "detector.out_channels=16", "detector.box_head_dim=32", "detector.mask_head_dims=[16]",
            "detector.anchor_sizes=[8, 16, 32, 64, 128]", "detector.rpn_proposals=[100, 50]",
            "detector.box_batch_size_per_image=32", "detector.detections_per_image=20",
            "batch_size=2", "log_every=1", "optim.lr=0.001", "progress=false", "figure_images=2",
            f"output_dir={out}", "device=cpu"]
    return load_config(DetectConfig, None, base + [f"{k}={v}" for k, v in over.items()])


def test_synthetic_set_is_exact_and_deterministic(coco_dir, tmp_path):
    again = build_demo_detection(tmp_path / "again", **SYNTHETIC)

    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".json"))
        return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes()
                                       for p in files)).hexdigest()
    assert digest(coco_dir) == digest(again)
    for split, count in (("train", 8), ("val", 4)):
        coco = load_coco(coco_dir / "annotations" / f"instances_{split}.json")
        assert len(coco.getImgIds()) == count and sorted(coco.getCatIds()) == list(range(1, 11))
        assert all(coco.imgToAnns[i] for i in coco.getImgIds())  # every image has a digit
        taken = {}
        for ann in coco.loadAnns(coco.getAnnIds()):
            mask = coco.annToMask(ann).astype(bool)
            rows, cols = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert ann["area"] == mask.sum() and 12 <= h <= 28
            image = np.asarray(Image.open(coco_dir / split /
                                          coco.imgs[ann["image_id"]]["file_name"]))
            assert len(np.unique(image[mask], axis=0)) == 1  # one colour, the whole mask
            previous = taken.setdefault(ann["image_id"], np.zeros_like(mask))
            assert not (previous & mask).any()  # digits do not overlap
            previous |= mask


def test_train_items_jitter_and_flip_consistently(coco_dir):
    args = (coco_dir / "train", coco_dir / "annotations" / "instances_train.json", True, 64)
    plain = CocoDetection(*args, scale_range=(1.0, 1.0), hflip=0.0)
    flipped = CocoDetection(*args, scale_range=(1.0, 1.0), hflip=1.0)
    (img, t), (img_f, t_f) = plain[0], flipped[0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32
    assert 0 <= img.min() <= img.max() <= 1
    assert torch.equal(img_f, img.flip(-1)) and torch.equal(t_f["masks"], t["masks"].flip(-1))
    assert torch.equal(t_f["boxes"][:, [0, 2]], 64 - t["boxes"][:, [2, 0]])
    coco = plain.coco
    anns = coco.imgToAnns[plain.ids[0]]
    want = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                          a["bbox"][1] + a["bbox"][3]] for a in anns])
    assert torch.equal(t["boxes"], want)  # unscaled, unflipped: the file's boxes
    assert t["labels"].tolist() == [a["category_id"] for a in anns]  # ids 1..10 are the labels
    big = CocoDetection(*args, scale_range=(2.0, 2.0), hflip=0.5)
    for i in range(4):
        torch.manual_seed(i)
        img, t = big[i]
        assert img.shape == (3, 64, 64)  # 128 x 128, cropped to the input size
        assert len(t["masks"]) == len(t["boxes"]) == len(t["labels"])
        assert torch.equal(t["boxes"], _tight_boxes(t["masks"].bool()))
    small = CocoDetection(*args, scale_range=(0.5, 0.5), hflip=0.0, masks=False)
    img, t = small[0]
    assert img.shape == (3, 32, 32) and "masks" not in t
    torch.testing.assert_close(t["boxes"], want / 2, rtol=0, atol=0)


def test_val_items_are_whole_images(coco_dir):
    val = CocoDetection(coco_dir / "val", coco_dir / "annotations" / "instances_val.json", False,
                        32)
    img, target = val[1]
    assert img.shape == (3, 64, 64) and set(target) == {"image_id"}
    assert val.categories == [str(d) for d in range(10)]


def _ground_truth_as_predictions(coco, image_ids, shift=0.0):
    preds = []
    for image_id in image_ids:
        anns = coco.imgToAnns[image_id]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns])
        boxes[:, 0::2] += shift * (boxes[:, 2:3] - boxes[:, 0:1])
        masks = torch.stack([torch.from_numpy(coco.annToMask(a)).float() for a in anns])
        preds.append({"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in anns]),
                      "scores": torch.ones(len(anns)), "masks": masks[:, None]})
    return preds


def test_coco_ap_of_perfect_shifted_and_no_predictions(coco_dir):
    coco = load_coco(coco_dir / "annotations" / "instances_val.json")
    ids = coco.getImgIds()
    categories = list(range(1, 11))
    perfect = coco_results(_ground_truth_as_predictions(coco, ids), ids, categories)
    assert len(perfect) == len(coco.getAnnIds())
    for kind in ("bbox", "segm"):
        assert coco_ap(coco, perfect, kind, ids)["ap"] == pytest.approx(100.0)
    shifted = coco_results(_ground_truth_as_predictions(coco, ids, shift=0.5), ids, categories)
    box = coco_ap(coco, shifted, "bbox", ids)
    assert box["ap"] < 50 and box["ap50"] < 100  # IoU of a half-width shift: 1/3
    assert coco_ap(coco, shifted, "segm", ids)["ap"] == pytest.approx(100.0)  # masks unmoved
    assert coco_ap(coco, [], "bbox", ids) == dict.fromkeys(box, 0.0)


@pytest.mark.parametrize("override,exc,match", [
    ({"model": "vit_small_patch16"}, ConfigError, "model must be a detection backbone"),
    ({"data.input_size": 48}, ConfigError, "input_size 48 must be a multiple of 32"),
    ({"model": "vitdet_small_patch14"}, ConfigError, "input_size 64 must be a multiple of 224"),
    ({"global_blocks": "[2]"}, ConfigError, r"global_blocks must be block indices in \[0, 1\]"),
    ({"detector.anchor_sizes": "[8, 16]"}, ConfigError, "anchor_sizes must be 5 positive"),
    ({"data.scale_range": "[2.0, 1.0]"}, ConfigError, "scale_range must be"),
    ({"checkpoint": "/nonexistent/ckpt.pt"}, ConfigError, "checkpoint file not found"),
    ({"data.path": ""}, ConfigError, "data.path is required"),
    ({"data.path": "/nonexistent/coco"}, FileNotFoundError, "COCO image folder not found"),
])
def test_bad_configurations_fail_before_work(coco_dir, tmp_path, override, exc, match):
    with pytest.raises(exc, match=match):
        detect(config(coco_dir, tmp_path / "out", max_steps=1, **override))
    assert not (tmp_path / "out" / "checkpoint-last.pt").exists()


def test_backbone_from_a_pretraining_checkpoint_faster_rcnn(coco_dir, tmp_path, capsys):
    torch.manual_seed(0)
    state = create_model("lomar_vit_small_patch16", **TINY).state_dict()
    path = save_checkpoint(tmp_path / "pre.pt", {"model": state})
    summary = detect(config(coco_dir, tmp_path / "run", max_steps=1, checkpoint=str(path),
                            **{"detector.kind": "faster_rcnn"}))
    out = capsys.readouterr().out
    assert "backbone: 28 tensors loaded (lomar checkpoint); new: pyramid.* (" in out
    assert "unused: cls_token, encoder_pred.bias, encoder_pred.weight, mask_token, norm.bias, " \
           "norm.weight; detector heads: new" in out
    assert "box_ap" in summary and "mask_ap" not in summary
    # One step at the warmup's lr 0: the backbone is still the checkpoint's encoder.
    trained = load_checkpoint(tmp_path / "run" / "checkpoint-last.pt")["model"]
    encoder = [k for k in state if k.startswith(("patch_embed.", "blocks."))]
    assert len(encoder) == 28
    assert all(torch.equal(trained[f"backbone.{k}"], state[k]) for k in encoder)


def test_resume_continues_exactly(coco_dir, tmp_path):
    # 4 steps per epoch, warmup of 2 steps: both parts see the same lr at steps 0-1.
    common = {"optim.warmup_epochs": 0.5, "eval_every": 2, "drop_path": 0.2}
    straight = detect(config(coco_dir, tmp_path / "straight", max_steps=4, **common))
    detect(config(coco_dir, tmp_path / "split", max_steps=2, **common))
    assert load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")["step"] == 2
    detect(config(coco_dir, tmp_path / "split", max_steps=4,
                  resume=str(tmp_path / "split" / "checkpoint-last.pt"), **common))
    logs = [read_log(tmp_path / run / "log.jsonl") for run in ("straight", "split")]
    for key in ("loss", "loss_mask", "loss_objectness", "box_ap", "mask_ap"):
        values = [[(r["step"], r[key]) for r in log if key in r] for log in logs]
        assert values[0] and values[0] == values[1], key  # bit for bit on CPU
    assert [r["step"] for r in logs[0] if "box_ap" in r] == [2, 4]
    a = load_checkpoint(tmp_path / "straight" / "checkpoint-last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extra"] == b["extra"] and a["extra"]["best_box_ap"] == straight["best_box_ap"]
    for name in ("checkpoint-best.pt", "model.safetensors"):
        assert (tmp_path / "straight" / name).is_file()
    for name in ("loss.png", "ap.png", "predictions.png"):
        assert (tmp_path / "straight" / name).read_bytes()[:4] == b"\x89PNG"
    assert 0 <= straight["box_ap"] <= 100 and 0 <= straight["mask_ap"] <= 100


def test_bf16_autocast_step_matches_fp32(coco_dir, tmp_path):
    """The GPU's path (bf16 autocast, training and evaluation) on the CPU."""
    for amp in ("false", "bf16"):
        detect(config(coco_dir, tmp_path / amp, max_steps=1, amp=amp))
    first = [read_log(tmp_path / amp / "log.jsonl")[0] for amp in ("false", "bf16")]
    assert first[0]["loss"] != first[1]["loss"]
    assert abs(first[1]["loss"] - first[0]["loss"]) <= 1e-2 * abs(first[0]["loss"])
    ap = [r["box_ap"] for r in read_log(tmp_path / "bf16" / "log.jsonl") if "box_ap" in r]
    assert ap and 0 <= ap[-1] <= 100


def test_detect_report(tmp_path, capsys):
    for run, aps in (("a", [10.0, 30.0, 25.0]), ("b", [5.0, 12.0, 15.0])):
        log = RunLog(tmp_path / run, tensorboard=False)
        for i, ap in enumerate(aps, 1):
            log.log(i * 10, loss=1.0)
            log.log(i * 10, box_ap=ap, mask_ap=ap / 2)
        log.close()
    assert main(["report", "detect", str(tmp_path / "cmp.png"), f"pre={tmp_path / 'a'}",
                               f"rand={tmp_path / 'b'}"]) == 0
    out = capsys.readouterr().out
    assert "pre: step 30: box AP 25.00, mask AP 12.50 (best box AP 30.00)" in out
    assert "pre - rand: +10.00 box AP, +5.00 mask AP" in out
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="report detect: no box_ap"):
        report("detect", str(tmp_path / "x.png"), {"untrained": str(tmp_path / "c")})


def test_cli(capsys):
    assert main(["detect", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "layer_decay: 0.7" in out and "window_size: 14" in out
    assert main(["detect", "detector.kindd=x"]) == 2
    assert "unknown key detector.kindd" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["demo_detect.yaml", "detect_vitdet_base_1024.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    import lomar

    path = Path(lomar.__file__).parent / "configs" / name
    cfg = load_config(DetectConfig, path, ["checkpoint=null"])
    assert cfg.model.startswith("vitdet_") and cfg.data.input_size % 32 == 0
