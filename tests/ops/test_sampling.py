"""sample_windows and sample_window_masks: shapes, exact counts, ranges,
reproducibility, uniformity (chi-square with a fixed seed and a generous bound),
distinctness and argument errors."""

import math

import pytest
import torch

import lomar_ops
from lomar_ops import sample_window_masks, sample_windows

from conftest import HAS_CUDA


def seeded(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def chi_square_bound(df: int) -> float:
    # Generous: mean df plus 8 standard deviations (sqrt(2 df)). A position that is
    # never drawn adds about the expected count (>= 100 below) on its own.
    return df + 8 * math.sqrt(2 * df)


def chi_square(counts: torch.Tensor, expected: float) -> float:
    return float(((counts.double() - expected) ** 2 / expected).sum())


# ---- sample_windows ------------------------------------------------------------

@pytest.mark.parametrize("grid_h,grid_w,K", [(7, 7, 7), (10, 6, 3), (14, 14, 1), (64, 40, 14)])
@pytest.mark.parametrize("distinct", [False, True])
def test_windows_shape_dtype_and_range(grid_h, grid_w, K, distinct):
    n = 1 if (grid_h, grid_w) == (K, K) else 4
    coords = sample_windows(5, grid_h, grid_w, n, K, generator=seeded(), distinct=distinct)
    assert coords.shape == (5, n, 2) and coords.dtype == torch.int64
    assert coords.device == torch.device("cpu")
    assert int(coords[..., 0].min()) >= 0 and int(coords[..., 0].max()) <= grid_h - K
    assert int(coords[..., 1].min()) >= 0 and int(coords[..., 1].max()) <= grid_w - K


def test_windows_fit_window_patchify():
    coords = sample_windows(3, 6, 5, 4, 3, generator=seeded())
    images = torch.randn(3, 3, 6 * 8, 5 * 8)
    out = lomar_ops.window_patchify(images, coords, 3, 8)
    assert out.shape == (3, 4, 9, 8 * 8 * 3)


@pytest.mark.parametrize("distinct", [False, True])
def test_windows_are_uniform_over_positions(distinct):
    # Grid 6x5, K = 3: 4 x 3 = 12 positions.
    rows, cols = 4, 3
    n = 6 if distinct else 12
    coords = sample_windows(2000, 6, 5, n, 3, generator=seeded(1), distinct=distinct)
    index = coords[..., 0] * cols + coords[..., 1]
    counts = torch.bincount(index.flatten(), minlength=rows * cols)
    assert counts.numel() == rows * cols and int(counts.min()) > 0  # the last one too
    expected = index.numel() / (rows * cols)  # 2000 (>= 100)
    assert chi_square(counts, expected) < chi_square_bound(rows * cols - 1)


def test_windows_are_independent_across_images():
    # Image 0's and image 1's window i, as pairs: uniform over 12 x 12 cells.
    coords = sample_windows(2, 6, 5, 14400, 3, generator=seeded(2))
    index = coords[..., 0] * 3 + coords[..., 1]  # (2, 14400)
    counts = torch.bincount(index[0] * 12 + index[1], minlength=144)
    assert chi_square(counts, 100.0) < chi_square_bound(143)


def test_windows_distinct_within_each_image():
    coords = sample_windows(50, 6, 5, 12, 3, generator=seeded(3), distinct=True)
    index = coords[..., 0] * 3 + coords[..., 1]
    # 12 of 12 positions: each image gets every position once, in random order.
    assert torch.equal(index.sort(dim=1).values, torch.arange(12).expand(50, 12))
    assert len({tuple(row.tolist()) for row in index}) > 40
    coords = sample_windows(200, 9, 9, 8, 7, generator=seeded(4), distinct=True)
    index = coords[..., 0] * 3 + coords[..., 1]
    assert all(len(set(row.tolist())) == 8 for row in index)


def test_windows_without_distinct_can_repeat():
    # 200 draws of 9 windows over 9 positions: repeats are (almost) certain.
    coords = sample_windows(200, 9, 9, 9, 7, generator=seeded(5))
    index = coords[..., 0] * 3 + coords[..., 1]
    assert any(len(set(row.tolist())) < 9 for row in index)


@pytest.mark.parametrize("distinct", [False, True])
def test_windows_reproducible_through_the_generator(distinct):
    def draw(seed):
        return sample_windows(8, 20, 30, 4, 7, generator=seeded(seed), distinct=distinct)
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    g = seeded(7)
    first = sample_windows(8, 20, 30, 4, 7, generator=g, distinct=distinct)
    second = sample_windows(8, 20, 30, 4, 7, generator=g, distinct=distinct)
    assert not torch.equal(first, second)  # the generator advances


def test_windows_rejects_bad_arguments():
    cases = [
        (dict(batch=2, grid_h=6, grid_w=5, num_windows=2, window_size=6), ValueError,
         r"window_size 6 does not fit the patch grid \(grid_h, grid_w\) = \(6, 5\)"),
        (dict(batch=2, grid_h=6, grid_w=5, num_windows=13, window_size=3, distinct=True),
         ValueError, r"num_windows 13 distinct windows .* only 12 positions"),
        (dict(batch=2, grid_h=6, grid_w=5, num_windows=0, window_size=3), ValueError,
         "num_windows must be >= 1, got 0"),
        (dict(batch=2, grid_h=6, grid_w=5, num_windows=2, window_size=0), ValueError,
         "window_size must be >= 1, got 0"),
        (dict(batch=2.0, grid_h=6, grid_w=5, num_windows=2, window_size=3), TypeError,
         "batch must be an int"),
        (dict(batch=2, grid_h=6, grid_w=5, num_windows=2, window_size=3, generator=0),
         TypeError, "generator must be a torch.Generator"),
        (dict(batch=2, grid_h=6, grid_w=5, num_windows=2, window_size=3, generator=seeded(),
              device="meta"), ValueError, "generator is on cpu but device is meta"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            sample_windows(**kwargs)


@pytest.mark.gpu
def test_windows_on_the_generators_device():
    coords = sample_windows(4, 14, 14, 4, 7, generator=seeded(0, "cuda"), distinct=True)
    assert coords.device.type == "cuda"
    assert sample_windows(4, 14, 14, 4, 7, device="cuda").device.type == "cuda"


# ---- sample_window_masks ---------------------------------------------------------

@pytest.mark.parametrize("K", [2, 3, 5, 7, 9, 11, 14])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75, 0.8, 0.9])
def test_masks_have_exact_counts(K, ratio):
    mask = sample_window_masks(64, K, ratio, generator=seeded(K))
    assert mask.shape == (64, K * K) and mask.dtype == torch.bool
    assert mask.device == torch.device("cpu")
    assert torch.equal(mask.sum(dim=1), torch.full((64,), math.floor(K * K * ratio)))


def test_masks_lomar_default():
    mask = sample_window_masks(10, 7, 0.8, generator=seeded())
    assert (mask.sum(dim=1) == 39).all()  # 80% of 49


def test_masks_are_uniform_over_positions():
    mask = sample_window_masks(9000, 3, 0.5, generator=seeded(1))  # 4 of 9 per row
    counts = mask.sum(dim=0)
    assert int(counts.min()) > 0  # the last position too
    expected = 9000 * 4 / 9  # 4000
    assert chi_square(counts, expected) < chi_square_bound(8)


def test_masks_are_uniform_over_subsets_and_rows_independent():
    # 4 of 9 positions: C(9, 4) = 126 subsets, each expected 100 times in 12600 rows.
    mask = sample_window_masks(12600, 3, 0.5, generator=seeded(2))
    codes = (mask.long() << torch.arange(9)).sum(dim=1)
    counts = torch.bincount(codes, minlength=512)
    counts = counts[counts > 0]
    assert counts.numel() == math.comb(9, 4)
    assert chi_square(counts, 100.0) < chi_square_bound(125)
    # Consecutive rows as pairs (positions of row i, row i+1): independent.
    pairs = mask[:-1, :, None] & mask[1:, None, :]  # (S-1, 9, 9)
    expected = (12600 - 1) * (4 / 9) ** 2
    assert chi_square(pairs.sum(dim=0).flatten(), expected) < chi_square_bound(80)


def test_masks_reproducible_through_the_generator():
    assert torch.equal(sample_window_masks(16, 7, 0.8, generator=seeded(3)),
                       sample_window_masks(16, 7, 0.8, generator=seeded(3)))
    assert not torch.equal(sample_window_masks(16, 7, 0.8, generator=seeded(3)),
                           sample_window_masks(16, 7, 0.8, generator=seeded(4)))


def test_masks_reject_bad_arguments():
    cases = [
        ((4, 7, 0.0), ValueError, r"mask_ratio must lie in \(0, 1\), got 0.0"),
        ((4, 7, 1.0), ValueError, r"mask_ratio must lie in \(0, 1\), got 1.0"),
        ((4, 7, -0.5), ValueError, r"mask_ratio must lie in \(0, 1\)"),
        ((4, 7, 1.5), ValueError, r"mask_ratio must lie in \(0, 1\)"),
        ((4, 7, 0.01), ValueError, r"mask_ratio 0.01 masks nothing .*floor\(49 \* 0.01\) = 0"),
        ((4, 1, 0.9), ValueError, "mask_ratio 0.9 masks nothing"),
        ((4, 7, "0.8"), TypeError, "mask_ratio must be a float"),
        ((4, 0, 0.8), ValueError, "window_size must be >= 1, got 0"),
        ((4.0, 7, 0.8), TypeError, "num_sequences must be an int"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            sample_window_masks(*args)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (none is visible)")
def test_masks_on_the_generators_device():
    mask = sample_window_masks(8, 7, 0.8, generator=seeded(0, "cuda"))
    assert mask.device.type == "cuda" and (mask.sum(dim=1) == 39).all()
