"""UperNet and the auxiliary FCN head on the ViTDet backbone: mmsegmentation's state
dict names (as docs/segmentation.md lists them), shapes, the loss (ignore index,
auxiliary weight), SyncBatchNorm conversion, and one training step of ViT-B +
UperNet at 512x512 with gradients everywhere."""

import re
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lomar.models import create_model
from lomar.segmentation.segmenter import Segmenter, build_segmenter
from lomar.segmentation.upernet import FCNHead, UPerHead

DOCS = Path(__file__).resolve().parents[2] / "docs" / "segmentation.md"
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def tiny_segmenter(num_classes=5, aux_weight=0.4, **kwargs):
    backbone = create_model("vitdet_small_patch16", window_size=2, top_pool=False,
                            out_channels=16, drop_path_rate=0.0, **TINY)
    return build_segmenter(backbone, num_classes, 16, channels=24, aux_channels=8,
                           aux_weight=aux_weight, **kwargs)


def mmseg_head_keys(levels=4, pool_scales=4):
    """mmseg's UPerHead + FCNHead state dict keys, spelled out independently."""
    def conv_module(prefix):
        return [f"{prefix}.conv.weight"] + [f"{prefix}.bn.{k}" for k in BN]
    keys = []
    for i in range(pool_scales):
        keys += conv_module(f"decode_head.psp_modules.{i}.1")
    keys += conv_module("decode_head.bottleneck")
    for i in range(levels - 1):
        keys += conv_module(f"decode_head.lateral_convs.{i}")
        keys += conv_module(f"decode_head.fpn_convs.{i}")
    keys += conv_module("decode_head.fpn_bottleneck")
    keys += ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    keys += conv_module("auxiliary_head.convs.0")
    keys += ["auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"]
    return keys


def test_state_dict_has_mmsegmentations_names_and_shapes():
    model = tiny_segmenter(num_classes=5)
    state = model.state_dict()
    heads = [k for k in state if not k.startswith("backbone.")]
    assert sorted(heads) == sorted(mmseg_head_keys())
    assert all(k.startswith(("backbone.patch_embed.", "backbone.blocks.", "backbone.pyramid."))
               for k in state if k.startswith("backbone."))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    C, K = 24, 5  # channels, classes; every level 16 wide
    assert shapes["decode_head.psp_modules.0.1.conv.weight"] == (C, 16, 1, 1)
    assert shapes["decode_head.bottleneck.conv.weight"] == (C, 16 + 4 * C, 3, 3)
    assert shapes["decode_head.lateral_convs.0.conv.weight"] == (C, 16, 1, 1)
    assert shapes["decode_head.fpn_convs.2.conv.weight"] == (C, C, 3, 3)
    assert shapes["decode_head.fpn_bottleneck.conv.weight"] == (C, 4 * C, 3, 3)
    assert shapes["decode_head.conv_seg.weight"] == (K, C, 1, 1)
    assert shapes["auxiliary_head.convs.0.conv.weight"] == (8, 16, 3, 3)
    assert shapes["auxiliary_head.conv_seg.weight"] == (K, 8, 1, 1)
    assert "pixel_mean" not in state  # the normalisation lives in the run's config
    # Convolutions before BatchNorm have no bias (mmcv's ConvModule).
    assert not any(k.endswith("conv.bias") for k in heads)


def test_docs_list_exactly_the_head_keys():
    """docs/segmentation.md's key table: every documented pattern names real keys, and
    every key of the heads matches one pattern ({i} an index, * a BatchNorm tensor)."""
    text = DOCS.read_text()
    patterns = re.findall(r"`((?:decode|auxiliary)_head\.[^`]+)`", text)
    assert patterns, "no key table in docs/segmentation.md"
    regexes = [re.compile(re.escape(p).replace(r"\{i\}", r"\d+").replace(r"\*", r"[a-z_]+") + "$")
               for p in patterns]
    keys = [k for k in tiny_segmenter().state_dict() if not k.startswith("backbone.")]
    for key in keys:
        assert any(r.match(key) for r in regexes), f"{key} is not in the docs' table"
    for pattern, regex in zip(patterns, regexes):
        assert any(regex.match(k) for k in keys), f"docs name {pattern}, which is no key"


def test_shapes_and_logits_at_the_input_size():
    model = tiny_segmenter(num_classes=7).eval()
    images = torch.rand(2, 3, 64, 96)
    features = model.features(images)
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert tuple(model.decode_head(features).shape) == (2, 7, 16, 24)  # stride 4
    assert tuple(model(images).shape) == (2, 7, 64, 96)
    with pytest.raises(ValueError, match="UPerHead takes 4 feature maps, got 3"):
        model.decode_head(features[:3])


def test_normalises_with_its_own_statistics():
    model = tiny_segmenter(mean=(0.5, 0.25, 0.75), std=(0.5, 2.0, 0.25)).eval()
    images = torch.rand(1, 3, 32, 32)
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model(images)
    want = (images - torch.tensor([0.5, 0.25, 0.75]).view(3, 1, 1)) / \
        torch.tensor([0.5, 2.0, 0.25]).view(3, 1, 1)
    torch.testing.assert_close(seen[0], want)


def test_losses_ignore_index_and_auxiliary_weight():
    torch.manual_seed(0)
    model = tiny_segmenter(num_classes=4, aux_weight=0.4, ignore_index=255).eval()
    images = torch.rand(2, 3, 32, 32)
    targets = torch.randint(0, 4, (2, 32, 32))
    targets[0, :10] = 255
    losses = model(images, targets)
    assert set(losses) == {"loss_seg", "loss_aux"}
    logits = model(images)
    counted = targets != 255
    by_hand = -F.log_softmax(logits, 1).gather(1, targets.clamp(max=3)[:, None])[:, 0][counted]
    torch.testing.assert_close(losses["loss_seg"], by_hand.mean())
    aux = F.interpolate(model.auxiliary_head(model.features(images)[2]), size=(32, 32),
                        mode="bilinear", align_corners=False)
    torch.testing.assert_close(losses["loss_aux"], 0.4 * F.cross_entropy(aux, targets,
                                                                        ignore_index=255))
    # Every pixel ignored: a zero loss (not NaN) that backpropagates.
    empty = model(images, torch.full_like(targets, 255))
    assert float(empty["loss_seg"].detach()) == 0.0 == float(empty["loss_aux"].detach())
    sum(empty.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert set(tiny_segmenter(aux_weight=0.0)(images, targets)) == {"loss_seg"}


def test_sync_batchnorm_conversion_keeps_the_names():
    model = tiny_segmenter()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(synced.decode_head.bottleneck.bn, torch.nn.SyncBatchNorm)
    assert list(synced.state_dict()) == list(tiny_segmenter().state_dict())


def test_heads_refuse_bad_arguments():
    with pytest.raises(ValueError, match="two or more input levels and pool scales >= 1"):
        UPerHead([16], 8, 3)
    with pytest.raises(ValueError, match="pool scales >= 1"):
        UPerHead([16] * 4, 8, 3, pool_scales=(0, 2))
    with pytest.raises(ValueError, match="dropout in"):
        FCNHead(16, 8, 3, dropout=1.0)
    with pytest.raises(ValueError, match="one value per channel"):
        Segmenter(torch.nn.Identity(), UPerHead([4] * 4, 4, 2), mean=(0.5,), std=(0.5, 0.5))


@pytest.mark.slow
def test_vit_base_upernet_512_training_step():
    """One step of the ViT-B/16 backbone (window 16, global blocks 2, 5, 8, 11) with
    UperNet (512 wide) and the FCN head at 512x512, batch 2 (BatchNorm needs two
    values per channel in the 1x1 pyramid-pooling branch): a finite loss, and
    non-zero gradients in every block, the pyramid and both heads."""
    torch.manual_seed(0)
    backbone = create_model("vitdet_base_patch16", window_size=16, top_pool=False,
                            drop_path_rate=0.1)
    model = build_segmenter(backbone, 150, backbone.out_channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(2, 3, 512, 512)
    targets = torch.randint(0, 150, (2, 512, 512))
    targets[:, :64] = 255
    start = time.perf_counter()
    losses = model(images, targets)
    loss = sum(losses.values())
    loss.backward()
    print(f"ViT-B + UperNet 512x512, batch 2, forward + backward: "
          f"{time.perf_counter() - start:.1f} s")
    assert torch.isfinite(loss) and set(losses) == {"loss_seg", "loss_aux"}
    assert 4.0 < float(losses["loss_seg"].detach()) < 6.5  # about ln 150 = 5.0 at first

    def grad_norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
    parts = {f"backbone.blocks.{i}": blk for i, blk in enumerate(backbone.blocks)}
    parts.update({"backbone.patch_embed": backbone.patch_embed,
                  "backbone.pyramid": backbone.pyramid, "decode_head": model.decode_head,
                  "auxiliary_head": model.auxiliary_head})
    for name, module in parts.items():
        assert grad_norm(module) > 0, f"no gradient in {name}"
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    before = model.decode_head.conv_seg.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.decode_head.conv_seg.weight)
