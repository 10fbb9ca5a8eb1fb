"""lomar.schedule: the MAE/LoMaR learning-rate rule."""

import math

import pytest
import torch

from lomar.schedule import lr_at, scaled_lr, set_lr


def test_linear_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)


def test_warmup_then_cosine():
    peak, total, warm = 1e-3, 1000, 100
    assert lr_at(0, total, warm, peak) == 0.0
    assert lr_at(50, total, warm, peak) == pytest.approx(5e-4)
    assert lr_at(100, total, warm, peak) == pytest.approx(peak)
    assert lr_at(550, total, warm, peak) == pytest.approx(peak / 2)
    assert lr_at(1000, total, warm, peak, min_lr=1e-6) == pytest.approx(1e-6)
    mid = 100 + 900 * 0.25
    assert lr_at(mid, total, warm, peak) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi / 4)))
    lrs = [lr_at(s, total, warm, peak) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_bad_schedules():
    with pytest.raises(ValueError, match="warmup_steps <= total_steps"):
        lr_at(0, 10, 20, 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        scaled_lr(0.0, 256)


def test_set_lr_honours_lr_scale():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr_scale": 0.5}, {"params": [b]}], lr=1.0)
    set_lr(opt, 2e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 2e-3]
