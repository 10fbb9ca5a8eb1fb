"""lomar.models on tiny configurations: shapes, the fused-ops step equal to the
reference-ops step, the authors' architecture reproduced through convert_official,
variants (the asymmetric encoder-decoder among them), bad configurations."""

import pytest
import torch

import authors_lomar
import lomar_ops
from lomar.checkpoint import convert_official
from lomar.models import (IRPEAttention, LoMaRPretrain, LoMaRPretrainAsymmetric, create_model,
                          model_names)

TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=4)


def tiny(**kw):
    torch.manual_seed(0)
    model = LoMaRPretrain(**{**TINY, **kw})
    for blk in model.blocks:  # iRPE tables start at zero: make them matter
        if blk.attn.rpe_table is not None:
            torch.nn.init.normal_(blk.attn.rpe_table, std=0.5)
    return model


def test_parameter_count_matches_the_authors():
    model = create_model("lomar_vit_base_patch16")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 86_277_120


def test_shapes_and_masks_any_resolution():
    model = tiny()
    imgs = torch.randn(3, 3, 96, 64)  # 12 x 8 patch grid
    loss, pred, mask = model(imgs, window_size=5, num_windows=2, mask_ratio=0.6,
                             generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and pred.shape == (3, 2, 25, 192) and mask.shape == (3, 2, 25)
    assert (mask.sum(-1) == 15).all()


def test_generator_reproduces_and_window_sampling_modes():
    imgs = torch.randn(4, 3, 64, 64)
    model = tiny()
    a = model(imgs, 4, 3, 0.75, generator=torch.Generator().manual_seed(3))
    b = model(imgs, 4, 3, 0.75, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    coords, _ = model.sample(imgs, 4, 3, 0.75, torch.Generator().manual_seed(1))
    assert not all(torch.equal(coords[0], coords[i]) for i in range(1, 4))  # per image
    shared = tiny(window_sampling="batch")
    coords, _ = shared.sample(imgs, 4, 3, 0.75, torch.Generator().manual_seed(1))
    assert all(torch.equal(coords[0], coords[i]) for i in range(1, 4))


def test_a_generator_per_image_makes_draws_independent_of_the_batch():
    imgs = torch.randn(4, 3, 64, 64)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    for sampling in ("image", "batch"):
        model = tiny(window_sampling=sampling)
        coords, mask = model.sample(imgs, 4, 3, 0.75, gens([10, 11, 12, 13]))
        part_coords, part_mask = model.sample(imgs[2:], 4, 3, 0.75, gens([12, 13]))
        assert torch.equal(part_mask, mask[6:])  # image 2's 3 windows onwards
        if sampling == "image":
            assert torch.equal(part_coords, coords[2:])
            assert not torch.equal(coords[0], coords[1])
        else:  # shared windows: the first image's draw
            assert all(torch.equal(coords[0], c) for c in coords)
    with pytest.raises(ValueError, match="one generator per image, got 3 for a batch of 4"):
        model.sample(imgs, 4, 3, 0.75, gens([1, 2, 3]))


def test_fused_ops_step_equals_reference_ops_step():
    imgs = torch.randn(2, 3, 64, 80)
    results = []
    for backend in ("cpu", "torch"):
        model = tiny()
        model.ops_backend = backend
        loss, _, _ = model(imgs, 5, 3, 0.8, generator=torch.Generator().manual_seed(5))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")


def _official_state_dict(model: LoMaRPretrain) -> dict:
    """The authors' checkpoint for ``model``'s weights: their names and table layout."""
    sd = {}
    for name, value in model.state_dict().items():
        if name.endswith("attn.rpe_table"):
            sd[name.replace("rpe_table", "rpe_k.lookup_table_weight")] = value.t()[None].clone()
        else:
            sd[name] = value.clone()
    sd["pos_embed"] = torch.zeros(1, 1 + 64, model.embed_dim)  # theirs: present, unused
    return sd


def test_convert_official_reproduces_the_authors_architecture():
    ours = tiny()
    official = _official_state_dict(ours)
    torch.manual_seed(7)
    official = {k: (v + 0.1 * torch.randn_like(v)) if v.is_floating_point() else v
                for k, v in official.items()}  # weights unlike the ones ours was built with
    model = LoMaRPretrain(**TINY)
    model.load_state_dict(convert_official({"model": official, "epoch": 3}), strict=True)
    imgs = torch.randn(2, 3, 64, 72)
    coords, mask = model.sample(imgs, 7, 2, 0.8, torch.Generator().manual_seed(2))
    loss, pred, _ = model(imgs, 7, 2, 0.8, coords=coords, window_mask=mask)
    want_loss, want_pred = authors_lomar.forward(official, imgs, coords, mask, K=7, p=8,
                                                 depth=2, heads=4)
    torch.testing.assert_close(pred.flatten(0, 1), want_pred, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)


def test_convert_official_fine_tuning_checkpoint():
    model = create_model("vit_small_patch16", depth=1, num_classes=5)
    sd = {k: v for k, v in model.state_dict().items()}
    table = sd.pop("blocks.0.attn.rpe_table")
    sd["blocks.0.attn.rpe_k.lookup_table_weight"] = table.t()[None]
    converted = convert_official({"model": sd})
    assert torch.equal(converted["blocks.0.attn.rpe_table"], table)
    model.load_state_dict(converted, strict=True)
    with pytest.raises(ValueError, match="expected the authors' checkpoint dict"):
        convert_official({"model": {}})


def test_fine_tuning_model_pools_and_classifies():
    for pool in (True, False):
        model = create_model("vit_small_patch16", depth=2, num_classes=7, global_pool=pool,
                             drop_path_rate=0.1)
        logits = model(torch.randn(2, 3, 64, 48))
        assert logits.shape == (2, 7)
    assert "cls_token" in model.no_weight_decay()


def test_variants():
    per_head = tiny(per_head_rpe=True)
    assert per_head.blocks[0].attn.rpe_table.shape == (4, 50, 8)
    per_head(torch.randn(1, 3, 64, 64), 5, 2, 0.8)[0].backward()
    absolute = tiny(abs_pos_embed=True)
    assert absolute.blocks[0].attn.rpe_table is None
    loss, _, _ = absolute(torch.randn(1, 3, 64, 64), 5, 2, 0.8)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.randn(1, 3, 64, 64), window_size=9), "window_size 9 does not fit"),
    (lambda m: m(torch.randn(1, 3, 64, 64), mask_ratio=1.0), r"mask_ratio must be in \(0, 1\)"),
    (lambda m: m(torch.randn(1, 3, 60, 64)), "multiples of the patch size 8, got 60x64"),
    (lambda m: m(torch.randn(1, 1, 64, 64)), r"imgs must be \(B, 3, H, W\)"),
])
def test_bad_configurations(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny())


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'lomar_vit_tiny_patch16'; known: "):
        create_model("lomar_vit_tiny_patch16")


ASYM = dict(patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16,
            decoder_depth=2, decoder_num_heads=2)


def asymmetric(**kw):
    torch.manual_seed(0)
    model = LoMaRPretrainAsymmetric(**{**ASYM, **kw})
    for blk in list(model.blocks) + list(model.decoder_blocks):  # make the tables matter
        if blk.attn.rpe_table is not None:
            torch.nn.init.normal_(blk.attn.rpe_table, std=0.5)
    return model


def test_asymmetric_keeps_the_output_contract_and_reaches_every_parameter():
    imgs = torch.randn(3, 3, 64, 80)
    sym, asym = tiny(), asymmetric()
    coords, mask = sym.sample(imgs, 5, 2, 0.8, torch.Generator().manual_seed(4))
    want = sym(imgs, 5, 2, 0.8, coords=coords, window_mask=mask)
    got = asym(imgs, 5, 2, 0.8, coords=coords, window_mask=mask)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(got[2], want[2]) and torch.isfinite(got[0])
    got[0].backward()
    for name, p in asym.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_asymmetric_encoder_sees_only_visible_tokens():
    model = asymmetric()
    seen = {"encoder": [], "decoder": []}
    for part, blocks in (("encoder", model.blocks), ("decoder", model.decoder_blocks)):
        for blk in blocks:
            blk.register_forward_hook(lambda m, args, out, part=part: seen[part].append(
                tuple(args[0].shape)))
    model(torch.randn(2, 3, 64, 64), 7, 3, 0.8, generator=torch.Generator().manual_seed(0))
    visible = 49 - int(49 * 0.8)  # 10 of 49
    assert seen["encoder"] == [(6, 1 + visible, 32)] * 2
    assert seen["decoder"] == [(6, 1 + 49, 16)] * 2


def test_asymmetric_encoder_buckets_are_the_true_window_positions():
    model = asymmetric()
    # 5x5 window, visible raster positions 0, 12, 24: (0, 0), (2, 2), (4, 4)
    ids = model._encoder_bucket_ids(5, torch.tensor([[0, 12, 24]]), "cpu")[0]
    # product buckets (idx(drow) + 3) * 7 + idx(dcol) + 3; |offset| 4 -> 3; cls: 49
    want = torch.tensor([[49, 49, 49, 49],
                         [49, 24, 8, 0],
                         [49, 40, 24, 8],
                         [49, 48, 40, 24]], dtype=ids.dtype)
    assert torch.equal(ids, want)


def test_per_sequence_bucket_maps_equal_one_map_per_sequence():
    torch.manual_seed(1)
    attn = IRPEAttention(16, 2, 50)
    torch.nn.init.normal_(attn.rpe_table, std=0.5)
    full = lomar_ops.irpe_bucket_ids(5, 5)
    keep = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long),
                                   1 + torch.randperm(25)[:6].sort().values]) for _ in range(4)])
    maps = full[keep[:, :, None], keep[:, None, :]]  # (4, 7, 7)
    x = torch.randn(4, 7, 16)
    batched = attn(x, maps)
    one_by_one = torch.cat([attn(x[i:i + 1], maps[i], backend="cpu") for i in range(4)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_asymmetric_fused_ops_equal_reference_ops_and_variants():
    imgs = torch.randn(2, 3, 64, 64)
    results = []
    for backend in ("cpu", "torch"):
        model = asymmetric()
        model.ops_backend = backend
        loss, _, _ = model(imgs, 5, 2, 0.75, generator=torch.Generator().manual_seed(2))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")
    absolute = asymmetric(abs_pos_embed=True)
    assert absolute.blocks[0].attn.rpe_table is None
    assert torch.isfinite(absolute(imgs, 5, 2, 0.75)[0])


def test_asymmetric_registry_and_bad_masks():
    model = create_model("lomar_vit_small_patch16_dec512d8b", depth=1, decoder_depth=1)
    assert isinstance(model, LoMaRPretrainAsymmetric)
    assert model.decoder_embed_dim == 512 and len(model.decoder_blocks) == 1
    assert "lomar_vit_large_patch16_dec512d8b" in model_names()
    imgs = torch.randn(2, 3, 64, 64)
    coords, mask = asymmetric().sample(imgs, 5, 1, 0.8, torch.Generator().manual_seed(0))
    mask[0, mask[0].nonzero()[0]] = False  # one window with a patch fewer masked
    with pytest.raises(ValueError, match="same number of patches in every window"):
        asymmetric()(imgs, 5, 1, 0.8, coords=coords, window_mask=mask)


# ---- the registry: the one source of model facts ---------------------------------

def test_registry_facts_and_overrides():
    from lomar.models import model_info
    info = model_info("lomar_vit_base_patch14_dec512d8b")
    assert (info.family, info.task, info.size) == ("lomar_asymmetric", "pretrain", "base")
    assert (info.patch_size, info.embed_dim, info.depth, info.num_heads) == (14, 768, 12, 12)
    assert info.arch["decoder_depth"] == 8 and info.in_chans == 3
    small = info.with_kwargs({"depth": 2, "norm_pix_loss": False})
    assert small.depth == 2 and small.patch_size == 14 and info.depth == 12
    model = create_model("lomar_vit_base_patch14_dec512d8b", depth=1, decoder_depth=1)
    assert isinstance(model, info.builder) and model.patch_size == 14
    assert {model_info(n).task for n in model_names()} == {"pretrain", "encoder", "detection",
                                                           "baseline"}
    assert model_names("detection")[0] == "vitdet_small_patch16"


def test_unknown_or_wrong_task_names_are_refused_with_the_known_ones():
    from lomar.models import model_info
    with pytest.raises(ValueError, match="unknown model 'vit_tiny_patch16'; known: "
                                         "lomar_vit_small_patch16, "):
        create_model("vit_tiny_patch16")
    with pytest.raises(ValueError, match=r"model must be a fine-tuning encoder, got "
                                         r"'lomar_vit_base_patch16'; known: vit_small_patch16"):
        model_info("lomar_vit_base_patch16", "encoder")


def test_no_model_name_is_parsed_outside_the_registry():
    """Facts about a model are asked of the registry, never read out of its name."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "lomar"
    pattern = re.compile(r"""(split|partition)\(["'](_?patch|_)["']|"""
                         r"""(startswith|endswith)\(\(?["'](lomar_vit|vit|vitdet|mae|beit)"""
                         r"""|endswith\(["']_dec""")
    offenders = [f"{path.relative_to(root)}:{i}: {line.strip()}"
                 for path in sorted(root.rglob("*.py")) if path.name != "registry.py"
                 for i, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, "\n".join(offenders)
