"""The BEiT baselines: relative position index, layer scale, the attention's bias term,
shapes, loss and gradients, windows, backends, parameter count, bad input."""

import pytest
import torch
import torch.nn.functional as F

from lomar.models.baselines.beit import (BEiTAttention, BEiTPretrain, BEiTWindowPretrain,
                                  relative_position_index)
from lomar.models import create_model


def tiny_beit(**kw):
    return BEiTPretrain(**{"img_size": 112, "embed_dim": 32, "depth": 2, "num_heads": 4,
                           "vocab_size": 64, "tokenizer_width": 8, **kw})


def tiny_window(**kw):
    return BEiTWindowPretrain(**{"window_size": 7, "embed_dim": 32, "depth": 2, "num_heads": 4,
                                 "vocab_size": 64, "tokenizer_width": 8, **kw})


def test_relative_position_index_by_hand():
    # 2x2 grid: positions (0,0) (0,1) (1,0) (1,1); table (3*3) + 3 = 12 entries;
    # patch i -> j: (di + 1) * 3 + (dj + 1); cls query 9, cls key 10, cls-cls 11.
    want = torch.tensor([
        [11, 9, 9, 9, 9],
        [10, 4, 3, 1, 0],
        [10, 5, 4, 2, 1],
        [10, 7, 6, 4, 3],
        [10, 8, 7, 5, 4],
    ])
    assert torch.equal(relative_position_index(2, 2), want)


def test_relative_position_index_rectangular_and_range():
    index = relative_position_index(2, 3)  # 2 rows, 3 columns: (3 * 5) + 3 = 18 entries
    assert index.shape == (7, 7) and int(index.max()) == 17
    # patch (1, 2) (index 6) to patch (0, 0) (index 1): di = 1, dj = 2 -> (1+1)*5 + (2+2)
    assert index[6, 1] == 14 and index[1, 6] == 0
    patches = index[1:, 1:]
    assert torch.equal(patches.diagonal(), torch.full((6,), 7))  # (0+1)*5 + (0+2)


def test_layer_scale_biases_and_frozen_tokenizer():
    model = tiny_beit()
    for blk in model.blocks:
        assert torch.equal(blk.gamma_1, torch.full((32,), 0.1))
        assert torch.equal(blk.gamma_2, torch.full((32,), 0.1))
        assert blk.attn.qkv.bias is None  # q and v biases only
        assert blk.attn.q_bias.shape == blk.attn.v_bias.shape == (32,)
    assert model.rel_pos_bias.relative_position_bias_table.shape == (13 * 13 + 3, 4)
    assert not any(p.requires_grad for p in model.tokenizer.parameters())
    model.train()
    assert not model.tokenizer.training


def test_attention_bias_term_matches_hand_written_attention():
    torch.manual_seed(0)
    attn = BEiTAttention(16, 2)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    index = relative_position_index(2, 3)
    table = torch.randn(2, 18)  # (heads, NB)
    x = torch.randn(3, 7, 16)
    got = attn(x, table, index)
    bias = torch.cat([attn.q_bias, torch.zeros(16), attn.v_bias])
    q, k, v = (x @ attn.qkv.weight.t() + bias).view(3, 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) / 8 ** 0.5 + table[:, index]
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(3, 7, 16)
    assert torch.allclose(got, attn.proj(out), atol=1e-5)


def test_forward_shapes_loss_and_gradients():
    torch.manual_seed(0)
    model = tiny_beit()
    imgs = torch.randn(2, 3, 112, 112)
    masks = model.sample_masks(2, torch.Generator().manual_seed(3))
    loss, logits, mask = model(imgs, bool_masked_pos=masks)
    assert mask is masks and mask.shape == (2, 49) and mask.dtype == torch.bool
    assert logits.shape == (int(mask.sum()), 64) and torch.isfinite(loss)
    tokens = model.visual_tokens(imgs)
    assert tokens.shape == (2, 49)
    assert torch.allclose(loss, F.cross_entropy(logits, tokens[mask]))
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.rel_pos_bias.relative_position_bias_table.grad.abs().sum() > 0
    assert model.blocks[0].gamma_1.grad.abs().sum() > 0


def test_default_mask_is_beits_fraction():
    model = tiny_beit()
    _, _, mask = model(torch.randn(1, 3, 112, 112), generator=torch.Generator().manual_seed(0))
    assert 16 <= int(mask.sum()) <= round(49 * 75 / 196)  # 19 of 49, blocks of >= 16
    assert BEiTPretrain(img_size=224, depth=1, tokenizer_width=8).mask_generator \
        .num_masking_patches == 75


def test_reference_ops_give_the_same_step():
    torch.manual_seed(0)
    model = tiny_beit()
    imgs = torch.randn(2, 3, 112, 112)
    masks = model.sample_masks(2, torch.Generator().manual_seed(1))
    results = []
    for backend in (None, "torch"):
        model.ops_backend = backend
        model.zero_grad()
        loss = model(imgs, bool_masked_pos=masks)[0]
        loss.backward()
        table_grad = model.rel_pos_bias.relative_position_bias_table.grad.clone()
        results.append((loss.detach(), table_grad))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


def test_windows_tokens_come_from_each_window_crop():
    torch.manual_seed(0)
    model = tiny_window()
    imgs = torch.randn(2, 3, 160, 192)  # 10x12 patches
    coords = torch.tensor([[[0, 0], [3, 5]], [[2, 1], [1, 4]]])
    wm = model.sample_masks(4, torch.Generator().manual_seed(0))
    loss, logits, mask = model(imgs, coords=coords, window_mask=wm)
    assert mask.shape == (2, 2, 49) and torch.equal(mask.reshape(4, 49), wm)
    assert logits.shape == (int(wm.sum()), 64) and torch.isfinite(loss)
    # the targets: the tokenizer on window (b=1, w=1)'s pixels, cropped by hand
    crop = imgs[1:2, :, 16:16 + 112, 64:64 + 112]
    tokens = model.visual_tokens(crop)[0]
    wanted = model.tokenizer.tokens(F.interpolate(crop, size=(56, 56), mode="bilinear",
                                                  antialias=True))[0]
    assert torch.equal(tokens, wanted)
    masked_logits = logits[int(wm[:3].sum()):]  # logits come in mask order
    assert masked_logits.shape[0] == int(wm[3].sum())
    loss.backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_window_masks_are_blocks_inside_the_window():
    model = tiny_window()
    masks = model.sample_masks(50, torch.Generator().manual_seed(2)).reshape(50, 7, 7)
    counts = masks.sum((1, 2))
    # BEiT's generator on the 7x7 window: 40% (19 of 49), blocks of >= 16 patches
    assert model.mask_generator.num_masking_patches == 19
    assert int(counts.max()) <= 19 and counts.float().mean() > 16


def test_registered_and_parameter_count():
    with torch.device("meta"):  # shapes only
        model = create_model("beit_base_patch16")
    D, H, V, depth = 768, 12, 8192, 12
    # qkv weight, q and v biases, proj, two LayerNorms, fc1, fc2, two layer scales
    per_block = (3 * D * D + 2 * D + (D * D + D) + 4 * D + (D * 4 * D + 4 * D)
                 + (4 * D * D + D) + 2 * D)
    table = (2 * 14 - 1) ** 2 + 3
    want = (D * 3 * 16 * 16 + D) + 2 * D + table * H + depth * per_block + 2 * D + (D * V + V)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == want == 91_965_776
    with torch.device("meta"):
        window = create_model("beit_window_base_patch16", depth=1)
    assert window.rel_pos_bias.relative_position_bias_table.shape == (13 * 13 + 3, 12)


def test_tokenizer_weights_load(tmp_path):
    source = tiny_beit().tokenizer
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = tmp_path / "dvae.pt"
    torch.save({"model": source.state_dict()}, path)
    loaded = tiny_beit(tokenizer_weights=str(path)).tokenizer
    for a, b in zip(source.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_input():
    model = tiny_beit()
    with pytest.raises(ValueError, match="built for 7x7: create the model with img_size=128"):
        model(torch.randn(1, 3, 128, 128))
    with pytest.raises(ValueError, match=r"bool_masked_pos must be a bool tensor of shape \(1, 4"):
        model(torch.randn(1, 3, 112, 112), bool_masked_pos=torch.zeros(1, 48, dtype=torch.bool))
    with pytest.raises(ValueError, match="patch_size must be 16"):
        tiny_beit(patch_size=8)
    with pytest.raises(ValueError, match="img_size must be positive multiples"):
        tiny_beit(img_size=100)
    with pytest.raises(ValueError, match="window_size 7 does not fit the patch grid 6x8"):
        tiny_window()(torch.randn(1, 3, 96, 128))
    with pytest.raises(ValueError, match="unknown model 'beit_huge'"):
        create_model("beit_huge")


@pytest.mark.parametrize("name", ["beit_base_patch16", "beit_window_base_patch16"])
def test_other_bands_are_refused_by_name(name):
    with pytest.raises(ValueError, match=r"in_chans must be 3 for BEiT, got 6: .*dVAE tokenizer"):
        create_model(name, depth=1, in_chans=6)
