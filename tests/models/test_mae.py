"""The MAE baseline: parameter count and names, masking with given noise, shapes
at any resolution, the loss, bad input."""

from functools import partial

import pytest
import torch

from lomar.models import create_model as create_mae
from lomar.models.baselines import MaskedAutoencoderViT
from lomar.models.layers import sincos_2d


def tiny(**kw):
    return MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, **kw)


def test_vit_base_parameter_count_and_names():
    model = create_mae("mae_vit_base_patch16_dec512d8b")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 111_655_680
    sd = model.state_dict()
    assert sd["mask_token"].shape == (1, 1, 512)
    assert sd["decoder_pos_embed"].shape == (1, 197, 512) and sd["pos_embed"].shape == (1, 197, 768)
    assert sd["decoder_pred.weight"].shape == (768, 512)
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "patch_embed",
                        "blocks", "norm", "decoder_embed", "decoder_blocks", "decoder_norm",
                        "decoder_pred"}
    assert "blocks.11.attn.qkv.bias" in sd and "decoder_blocks.7.mlp.fc2.weight" in sd


def test_sincos_matches_the_formula():
    emb = sincos_2d(8, 2, 3)  # 2 rows, 3 columns
    row, col = 1, 2
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    want = torch.cat([torch.sin(col * omega), torch.cos(col * omega),
                      torch.sin(row * omega), torch.cos(row * omega)]).float()
    assert torch.allclose(emb[1 + row * 3 + col], want) and torch.equal(emb[0], torch.zeros(8))


def test_masking_keeps_the_smallest_noise():
    model = tiny()
    x = torch.randn(2, 16, 5)
    noise = torch.rand(2, 16)
    kept, mask, ids_restore = model.random_masking(x, 0.75, noise)
    assert kept.shape == (2, 4, 5)
    for b in range(2):
        keep = noise[b].argsort()[:4]
        assert torch.equal(kept[b], x[b, keep])
        assert mask[b].sum() == 12 and torch.equal(mask[b, keep], torch.zeros(4))
    assert torch.equal(ids_restore, noise.argsort(1).argsort(1))


def test_forward_shapes_any_resolution_and_loss():
    torch.manual_seed(0)
    model = tiny(norm_pix_loss=True)
    imgs = torch.randn(2, 3, 48, 24)  # 6x3 grid: not the 4x4 it was built for
    noise = torch.rand(2, 18)
    loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
    assert pred.shape == (2, 18, 192) and mask.shape == (2, 18)
    assert mask.sum(1).tolist() == [18 - int(18 * 0.25)] * 2
    target = model.patchify(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    want = ((pred - target) ** 2).mean(-1)[mask.bool()].mean()
    assert torch.allclose(loss, want)
    loss.backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.pos_embed.grad is None


def test_patchify_layout():
    model = tiny()
    imgs = torch.randn(1, 3, 16, 24)
    x = model.patchify(imgs)
    # patch (row 1, col 2), pixel (row 3, col 5), channel 2
    assert x[0, 1 * 3 + 2, (3 * 8 + 5) * 3 + 2] == imgs[0, 2, 8 + 3, 16 + 5]


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        model(torch.randn(1, 3, 32, 32), mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiples of the patch size 8, got 30x32"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"noise must be \(B, L\) = \(1, 16\)"):
        model(torch.randn(1, 3, 32, 32), noise=torch.rand(1, 15))
    with pytest.raises(ValueError, match="unknown model 'mae_vit_tiny'; known: "):
        create_mae("mae_vit_tiny")


def test_blocks_equal_timm_blocks_and_backends_agree():
    # attention now runs through lomar_ops.window_attention: same names, same numbers
    from timm.models.vision_transformer import Block as TimmBlock

    torch.manual_seed(0)
    model = tiny()
    ref = TimmBlock(32, 4, 4.0, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    ref.load_state_dict(model.blocks[0].state_dict(), strict=True)
    x = torch.randn(3, 17, 32)
    assert torch.allclose(model.blocks[0](x, None), ref(x), atol=1e-5)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    losses = []
    for backend in (None, "torch"):
        model.ops_backend = backend
        losses.append(model(imgs, noise=noise)[0])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
