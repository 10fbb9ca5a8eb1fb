"""iRPE bucket ids against an independent, scalar transcription of
docs/method.md#irpe-the-relative-position-encoding (per-axis piecewise index,
product buckets)."""

import math

import pytest
import torch

import lomar_ops


def piecewise_scalar(x: int, ratio: float) -> int:
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    if abs(x) <= alpha:
        return round(x)
    v = round(alpha + math.log(abs(x) / alpha) / math.log(gamma / alpha) * (beta - alpha))
    return int(math.copysign(min(beta, v), x))


def bucket_ids_scalar(height, width, num_cls, ratio):
    m = int(2 * ratio)
    side = 2 * m + 1
    pos = [(r, c) for r in range(height) for c in range(width)]
    total = num_cls + len(pos)
    ids = [[side * side] * total for _ in range(total)]
    for a, (ri, ci) in enumerate(pos):
        for b, (rj, cj) in enumerate(pos):
            ids[num_cls + a][num_cls + b] = ((piecewise_scalar(ri - rj, ratio) + m) * side
                                             + piecewise_scalar(ci - cj, ratio) + m)
    return torch.tensor(ids, dtype=torch.int32)


def test_per_axis_map_at_ratio_1_9():
    offsets = torch.arange(-40, 41)
    want = {0: 0, 1: 1, 2: 2, 3: 2}
    expected = torch.tensor([int(math.copysign(want.get(abs(x), 3), x)) for x in range(-40, 41)])
    assert torch.equal(lomar_ops.piecewise_index(offsets, 1.9), expected)


@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.9, 2.8, 3.3])
def test_piecewise_index_matches_scalar_formula(ratio):
    offsets = torch.arange(-60, 61)
    expected = torch.tensor([piecewise_scalar(int(x), ratio) for x in offsets])
    assert torch.equal(lomar_ops.piecewise_index(offsets, ratio), expected)


@pytest.mark.parametrize("height,width", [(1, 1), (7, 7), (3, 5), (5, 3), (2, 9), (14, 14), (4, 11)])
@pytest.mark.parametrize("num_cls", [0, 1, 2])
def test_bucket_ids_match_reference(height, width, num_cls):
    ids = lomar_ops.irpe_bucket_ids(height, width, num_cls=num_cls)
    assert ids.dtype == torch.int32
    assert ids.shape == (num_cls + height * width,) * 2
    assert torch.equal(ids, bucket_ids_scalar(height, width, num_cls, 1.9))


def test_bucket_ids_other_ratio():
    ids = lomar_ops.irpe_bucket_ids(6, 8, num_cls=1, ratio=2.8)
    assert torch.equal(ids, bucket_ids_scalar(6, 8, 1, 2.8))
    assert int(ids.max()) == lomar_ops.irpe_num_buckets(2.8) - 1 == 121


def test_window_map_uses_every_bucket():
    ids = lomar_ops.irpe_bucket_ids(7, 7)
    assert lomar_ops.irpe_num_buckets() == 50
    assert lomar_ops.irpe_num_buckets(num_cls=0) == 49
    assert set(ids.unique().tolist()) == set(range(50))
    assert (ids[0] == 49).all() and (ids[:, 0] == 49).all()
    assert int(ids[1:, 1:].max()) == 48
    # Zero offset is the centre bucket (3 * 7 + 3); query below-right of key: positive offsets.
    assert (ids[1:, 1:].diagonal() == 24).all()
    assert ids[1 + 7 * 1 + 1, 1] == (1 + 3) * 7 + (1 + 3)


def test_device_argument():
    ids = lomar_ops.irpe_bucket_ids(3, 4, device="meta")
    assert ids.device.type == "meta" and ids.shape == (13, 13)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(height=0, width=3), ValueError, "height must be >= 1, got 0"),
    (dict(height=3, width=-2), ValueError, "width must be >= 1, got -2"),
    (dict(height=2.5, width=3), TypeError, "height must be an int, got float"),
    (dict(height=3, width=3, num_cls=-1), ValueError, "num_cls must be >= 0"),
    (dict(height=3, width=3, ratio=0.0), ValueError, "ratio must be a positive finite number"),
    (dict(height=3, width=3, ratio=float("nan")), ValueError, "ratio must be a positive finite"),
    (dict(height=3, width=3, ratio="1.9"), TypeError, "ratio must be a float"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lomar_ops.irpe_bucket_ids(**kwargs)
