"""BEiT's block-wise mask generator and the dVAE tokenizer architecture."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lomar.models.baselines.beit_masking import BlockMaskGenerator
from lomar.models.baselines.dvae import DVAEEncoder


def test_mask_count_at_224():
    gen = BlockMaskGenerator((14, 14), 75)
    g = torch.Generator().manual_seed(0)
    counts = [int(gen(g).sum()) for _ in range(300)]
    assert max(counts) == 75  # never over budget
    assert sum(c == 75 for c in counts) > 0.6 * len(counts)  # usually exactly the target
    assert sum(counts) / len(counts) > 73.5


def test_blocks_respect_size_and_aspect():
    gen = BlockMaskGenerator((14, 14), 75, min_num_patches=16, min_aspect=0.3)
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        mask, blocks = gen.sample(g)
        union = torch.zeros(14, 14, dtype=torch.bool)
        for top, left, h, w, area, aspect in blocks:
            assert 0.3 - 1e-9 <= aspect <= 1 / 0.3 + 1e-9
            assert h == round(math.sqrt(area * aspect)) and w == round(math.sqrt(area / aspect))
            assert 0 <= top <= 14 - h and 0 <= left <= 14 - w and h < 14 and w < 14
            union[top:top + h, left:left + w] = True
        assert torch.equal(union, mask)  # the mask is exactly the union of its blocks
        first_area = blocks[0][4]
        assert 16 <= first_area <= 75  # a fresh budget: at least min_num_patches


def test_reproducible_and_other_grids():
    gen = BlockMaskGenerator((24, 24), round(75 * 576 / 196))
    a = gen(torch.Generator().manual_seed(5))
    b = gen(torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (24, 24) and int(a.sum()) <= 220


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"num_masking_patches must be in \[1, 196\]"):
        BlockMaskGenerator((14, 14), 200)
    with pytest.raises(ValueError, match="min_aspect must be positive"):
        BlockMaskGenerator((14, 14), 75, min_aspect=0)


def test_dvae_architecture_size_and_cost():
    with torch.device("meta"):
        model = DVAEEncoder()
        x = torch.empty(1, 3, 112, 112)
    assert sum(p.numel() for p in model.parameters()) == 53_786_240  # "about 54M"
    with FlopCounterMode(display=False) as counter:
        logits = model(x)
    assert logits.shape == (1, 8192, 14, 14)
    gmac = counter.get_total_flops() / 2 / 1e9
    assert abs(gmac - 26.1) < 0.1  # the hand count of docs/method.md#baselines


def test_dvae_tokens():
    model = DVAEEncoder(n_hid=16, vocab_size=32)
    tokens = model.tokens(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 16) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 32
