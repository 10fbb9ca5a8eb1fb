"""The ViTDet backbone (lomar/models/vitdet.py) on tiny configurations: windows
that cover the grid equal global attention, padding against a window-by-window
reference, fused ops against the reference ops, the pyramid's shapes and strides,
torchvision's Mask R-CNN / Faster R-CNN taking it as it is, checkpointing, bf16
autocast, weights from pretraining checkpoints, layer-decay groups, bad input."""

import argparse
import math

import pytest
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN

import lomar_ops
from lomar.checkpoint import export_safetensors, save_checkpoint
from lomar.detection import build_detector
from lomar.engine.detect import detector_param_groups
from lomar.engine.init_weights import load_encoder_weights
from lomar.models import ViTDetBackbone, create_model, model_names
from lomar.models.vitdet import default_global_blocks, window_partition, window_unpartition

TINY = dict(embed_dim=32, depth=3, num_heads=2, out_channels=16)


def backbone(seed=0, **kw):
    torch.manual_seed(seed)
    model = ViTDetBackbone(**{"patch_size": 8, "drop_path_rate": 0.0, **TINY, **kw})
    for blk in model.blocks:  # iRPE tables start at zero: make them matter
        if blk.attn.rpe_table is not None:
            torch.nn.init.normal_(blk.attn.rpe_table, std=0.5)
    return model


def test_default_global_blocks_are_vitdets():
    assert default_global_blocks(12) == (2, 5, 8, 11)
    assert default_global_blocks(24) == (5, 11, 17, 23)
    assert default_global_blocks(32) == (7, 15, 23, 31)
    model = create_model("vitdet_base_patch16", depth=12, embed_dim=32, num_heads=2)
    assert [b.window_size for b in model.blocks] == [14, 14, 0] * 4


def test_partition_round_trip_with_padding():
    x = torch.randn(2, 5, 7, 4)
    windows, padded = window_partition(x, 3)
    assert padded == (6, 9) and windows.shape == (2 * 2 * 3, 9, 4)
    # window (0, 1) of image 1: rows 0-2, columns 3-5, raster order
    torch.testing.assert_close(windows[6 + 1], x[1, 0:3, 3:6].reshape(9, 4), rtol=0, atol=0)
    assert (windows[5].view(3, 3, 4)[2:] == 0).all()  # padded rows (row 6 > 4) are zeros
    assert torch.equal(window_unpartition(windows, 3, padded, (5, 7)), x)


def test_one_window_covering_the_grid_equals_global_blocks():
    imgs = torch.randn(2, 3, 48, 48)  # 6 x 6 patches
    windowed = backbone(window_size=6, global_blocks=())
    global_ = backbone(window_size=0)
    assert all(b.window_size == 6 for b in windowed.blocks)
    assert all(b.window_size == 0 for b in global_.blocks)
    a, b = windowed.forward_features(imgs), global_.forward_features(imgs)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for x, y in zip(windowed(imgs).values(), global_(imgs).values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def _reference_block(blk, x, K):
    """ViTDet's windowed block written out: zero padding after norm1, every window
    attended on its own by the reference formula, padding cut away."""
    B, H, W, D = x.shape
    Hp, Wp = math.ceil(H / K) * K, math.ceil(W / K) * K
    padded = torch.zeros(B, Hp, Wp, D)
    padded[:, :H, :W] = blk.norm1(x)
    attended = torch.zeros_like(padded)
    ids = lomar_ops.irpe_bucket_ids(K, K, num_cls=0)
    for r in range(0, Hp, K):
        for c in range(0, Wp, K):
            window = padded[:, r:r + K, c:c + K].reshape(B, K * K, D)
            attended[:, r:r + K, c:c + K] = blk.attn(window, ids, "torch").view(B, K, K, D)
    x = x + attended[:, :H, :W]
    return x + blk.mlp(blk.norm2(x))


def test_windows_pad_grids_that_are_not_multiples():
    model = backbone(window_size=3, global_blocks=(1,))
    imgs = torch.randn(2, 3, 40, 56)  # 5 x 7 patches: padded to 6 x 9 in windowed blocks
    x = torch.randn(2, 5, 7, 32)
    blk = model.blocks[0]
    got = blk(x, model.bucket_ids(3, 3, "cpu"))
    torch.testing.assert_close(got, _reference_block(blk, x, 3), rtol=1e-5, atol=1e-5)
    out = model.forward_features(imgs)
    assert out.shape == (2, 32, 5, 7) and torch.isfinite(out).all()


def test_fused_ops_equal_reference_ops():
    imgs = torch.randn(2, 3, 40, 56)
    results = []
    for ops in ("cpu", "torch"):
        model = backbone(window_size=3, global_blocks=(1,))
        model.ops_backend = ops
        out = model(imgs)
        loss = sum((v * torch.linspace(-1, 1, v.numel()).view_as(v)).sum() for v in out.values())
        loss.backward()
        results.append(({k: v.detach() for k, v in out.items()},
                        {n: p.grad for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    for k in out_a:
        torch.testing.assert_close(out_a[k], out_b[k], rtol=1e-4, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", [n for n in model_names() if n.startswith("vitdet_")])
def test_every_registered_backbone_runs_and_trains(name):
    model = create_model(name, depth=2, embed_dim=32, num_heads=2, out_channels=8,
                         window_size=4, drop_path_rate=0.1)
    p = model.patch_size
    out = model(torch.randn(1, 3, 8 * p, 12 * p))
    sum(v.square().mean() for v in out.values()).backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    for n, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), n
        assert param.grad.abs().sum() > 0, n


@pytest.mark.parametrize("patch,size", [(16, (64, 96)), (8, (64, 96)), (14, (224, 448))])
def test_pyramid_shapes_and_strides(patch, size):
    model = backbone(patch_size=patch, window_size=4)
    h, w = size
    out = model(torch.randn(2, 3, h, w))
    assert list(out) == ["0", "1", "2", "3", "pool"] and model.out_channels == 16
    for key, stride in zip(out, (4, 8, 16, 32, 64)):
        assert out[key].shape == (2, 16, math.ceil(h / stride), math.ceil(w / stride)), key
    assert list(backbone(top_pool=False)(torch.randn(1, 3, 64, 64))) == ["0", "1", "2", "3"]


def _targets(n_images, size, classes):
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(n_images):
        xy = torch.randint(0, size // 2, (2, 2), generator=g).float()
        boxes = torch.cat([xy, xy + size // 4 + 4], dim=1)
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, classes, (2,), generator=g),
                        "masks": masks})
    return targets


@pytest.mark.parametrize("detector", [MaskRCNN, FasterRCNN])
def test_torchvision_detectors_take_the_backbone_as_it_is(detector):
    model = detector(backbone(window_size=3), num_classes=4, min_size=64, max_size=64)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    losses = model(images, _targets(2, 48, 4))
    assert {"loss_classifier", "loss_box_reg", "loss_objectness"} <= set(losses)
    assert ("loss_mask" in losses) == (detector is MaskRCNN)
    sum(losses.values()).backward()
    for n, p in model.backbone.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[1]["boxes"].shape[1] == 4
    if detector is MaskRCNN:
        assert out[1]["masks"].shape[-2:] == (48, 64)  # in the input image's size


def test_build_detector_square_inputs_and_bad_anchors():
    model = build_detector(backbone(window_size=3), 3, input_size=64,
                           anchor_sizes=(8, 16, 32, 64, 128), box_head_dim=32,
                           mask_head_dims=(16,), rpn_proposals=(50, 20))
    images = [torch.rand(3, 40, 64), torch.rand(3, 64, 24)]
    batch, _ = model.transform(images, _targets(2, 24, 3))
    assert batch.tensors.shape == (2, 3, 64, 64)  # one square size: one grid
    model.eval()
    batch, _ = model.transform([torch.rand(3, 100, 50)])
    assert batch.tensors.shape == (1, 3, 64, 64) and batch.image_sizes == [(64, 32)]
    model.train()
    with pytest.raises(ValueError, match="at most input_size 64 a side"):
        model(images + [torch.rand(3, 65, 30)], _targets(3, 24, 3))
    with pytest.raises(ValueError, match=r"one size per pyramid level \(5\)"):
        build_detector(backbone(), 3, anchor_sizes=(32, 64, 128, 256))
    with pytest.raises(ValueError, match="kind must be one of"):
        build_detector(backbone(), 3, kind="retinanet")


def test_checkpointing_gives_the_same_outputs_and_gradients():
    imgs = torch.randn(2, 3, 40, 48)
    results = []
    for checkpointing in (False, True):
        model = backbone(window_size=3, drop_path_rate=0.3, checkpointing=checkpointing)
        torch.manual_seed(5)  # drop path draws, replayed by checkpoint's recomputation
        out = model(imgs)
        sum(v.sum() for v in out.values()).backward()
        results.append((out["2"].detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_runs_close_to_fp32():
    model = backbone(window_size=3)
    imgs = torch.randn(1, 3, 40, 48)
    want = model.forward_features(imgs)
    with torch.autocast("cpu", torch.bfloat16):
        got = model.forward_features(imgs)
        model(imgs)["0"].float().sum().backward()
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: ~0.4% per rounding, a few dozen roundings deep
    assert (got.float() - want).norm() / want.norm() < 0.05


def test_compiles_without_graph_breaks():
    model = backbone(window_size=3, global_blocks=(1,))
    imgs = torch.randn(1, 3, 40, 48)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(imgs)["1"], model(imgs)["1"], rtol=1e-5, atol=1e-6)


def _pretraining_state(**kw):
    torch.manual_seed(0)
    return create_model("lomar_vit_small_patch8", embed_dim=32, depth=3, num_heads=2,
                        **kw).state_dict()


@pytest.mark.parametrize("fmt", ["checkpoint", "safetensors", "official"])
def test_load_pretraining_weights_reports_loaded_new_unused(tmp_path, fmt):
    state = _pretraining_state()
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
    model = backbone()
    report = load_encoder_weights(model, path)
    own = model.state_dict()
    encoder = sorted(k for k in own if k.startswith(("patch_embed.", "blocks.")))
    assert report.loaded == encoder
    assert all(torch.equal(own[k], state[k]) for k in encoder)
    assert report.missing and all(k.startswith("pyramid.") for k in report.missing)
    assert set(report.unused) == {"cls_token", "mask_token", "norm.weight", "norm.bias",
                                  "encoder_pred.weight", "encoder_pred.bias"}
    assert report.source == ("official" if fmt == "official" else "lomar")


def test_load_refuses_another_width(tmp_path):
    torch.manual_seed(0)
    wide = create_model("lomar_vit_small_patch8", embed_dim=64, depth=3, num_heads=2)
    path = save_checkpoint(tmp_path / "wide.pt", {"model": wide.state_dict()})
    with pytest.raises(ValueError, match="does not fit the model"):
        load_encoder_weights(backbone(), path)


def test_detector_layer_decay_groups():
    model = build_detector(backbone(), 3, input_size=64, box_head_dim=32, mask_head_dims=(16,))
    groups = detector_param_groups(model, 0.1, 0.5)
    where = {id(p): g for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(where) == len(params) == sum(len(g["params"]) for g in groups)
    expected = {"backbone.patch_embed.proj.weight": 0.5 ** 4,
                "backbone.blocks.0.attn.qkv.weight": 0.5 ** 3,
                "backbone.blocks.2.mlp.fc2.bias": 0.5, "backbone.pyramid.output.0.1.weight": 1.0,
                "rpn.head.conv.0.0.weight": 1.0, "roi_heads.box_head.fc6.weight": 1.0}
    for name, scale in expected.items():
        assert where[id(params[name])]["lr_scale"] == pytest.approx(scale), name
    no_decay = {n for n, p in params.items() if where[id(p)]["weight_decay"] == 0}
    assert no_decay == {n for n, p in params.items()
                        if p.ndim <= 1 or n.endswith(("bias", "rpe_table"))}


@pytest.mark.parametrize("kwargs,match", [
    ({"window_size": -1}, "window_size must be an int >= 0"),
    ({"global_blocks": (3,)}, r"global_blocks must be block indices in \[0, 2\]"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        backbone(**kwargs)


@pytest.mark.parametrize("imgs,match", [
    (torch.randn(1, 3, 60, 64), "multiples of the patch size 8, got 60x64"),
    (torch.randn(1, 1, 64, 64), r"images must be \(B, 3, H, W\)"),
    (torch.randn(3, 64, 64), r"images must be \(B, 3, H, W\), got \(3, 64, 64\)"),
])
def test_bad_images(imgs, match):
    with pytest.raises(ValueError, match=match):
        backbone()(imgs)
