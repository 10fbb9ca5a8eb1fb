"""Random windows and masks of the LoMaR step (docs/method.md#the-pretraining-step,
steps 1-2), pure PyTorch on the given device, reproducible through a torch.Generator."""

from __future__ import annotations

import math

import torch

from ._validation import check_positive_int


def _device_of(op: str, generator: torch.Generator | None,
               device: torch.device | str | None) -> torch.device:
    """``device``, else the generator's device, else cpu; they must agree."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator or None, "
                        f"got {type(generator).__name__}")
    gen_device = generator.device if generator is not None else None
    if device is None:
        return gen_device or torch.device("cpu")
    device = torch.device(device)
    if gen_device is not None and gen_device.type != device.type:
        raise ValueError(f"{op}: generator is on {gen_device} but device is {device}; "
                         "draw with a generator of that device")
    return device


def sample_windows(batch: int, grid_h: int, grid_w: int, num_windows: int, window_size: int,
                   generator: torch.Generator | None = None, distinct: bool = False,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Top-left corners of ``num_windows`` windows of ``window_size`` x ``window_size``
    patches per image, uniform over the valid positions [0, grid_h-K] x [0, grid_w-K],
    independently per image.

    Args:
        batch: B, images.
        grid_h, grid_w: the patch grid (H/p, W/p).
        num_windows: n, windows per image.
        window_size: K.
        generator: a torch.Generator, for reproducible draws.
        distinct: draw different corners within an image (without replacement).
        device: where to draw; default the generator's device, else cpu.

    Returns:
        (B, n, 2) int64 (top row, left column), for :func:`lomar_ops.window_patchify`.
    """
    op = "sample_windows"
    check_positive_int(op, "batch", batch, minimum=0)
    check_positive_int(op, "grid_h", grid_h)
    check_positive_int(op, "grid_w", grid_w)
    check_positive_int(op, "num_windows", num_windows)
    K = check_positive_int(op, "window_size", window_size)
    if K > grid_h or K > grid_w:
        raise ValueError(f"{op}: window_size {K} does not fit the patch grid "
                         f"(grid_h, grid_w) = ({grid_h}, {grid_w})")
    device = _device_of(op, generator, device)
    cols = grid_w - K + 1
    positions = (grid_h - K + 1) * cols
    if distinct:
        if num_windows > positions:
            raise ValueError(f"{op}: num_windows {num_windows} distinct windows of size {K} "
                             f"do not exist in a ({grid_h}, {grid_w}) grid: it has only "
                             f"{positions} positions")
        # The first n of a uniform random permutation of the positions, per image.
        keys = torch.rand((batch, positions), generator=generator, device=device,
                          dtype=torch.float64)
        index = keys.argsort(dim=1)[:, :num_windows]
    else:
        index = torch.randint(0, positions, (batch, num_windows), generator=generator,
                              device=device)
    return torch.stack((index // cols, index % cols), dim=-1)


def sample_window_masks(num_sequences: int, window_size: int, mask_ratio: float,
                        generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Masks of the patches of each window: exactly ``floor(K*K*mask_ratio)`` True
    per row, at uniformly random positions, independently per row.

    Args:
        num_sequences: S, windows (B * n).
        window_size: K.
        mask_ratio: in (0, 1), and large enough to mask at least one patch.
        generator: a torch.Generator, for reproducible draws.
        device: where to draw; default the generator's device, else cpu.

    Returns:
        (S, K*K) bool, True = masked, in the window's raster order.
    """
    op = "sample_window_masks"
    check_positive_int(op, "num_sequences", num_sequences, minimum=0)
    K = check_positive_int(op, "window_size", window_size)
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
        raise TypeError(f"{op}: mask_ratio must be a float, got "
                        f"{type(mask_ratio).__name__} {mask_ratio!r}")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"{op}: mask_ratio must lie in (0, 1), got {mask_ratio}")
    length = K * K
    num_masked = math.floor(length * mask_ratio)
    if num_masked == 0:
        raise ValueError(f"{op}: mask_ratio {mask_ratio} masks nothing in a window of "
                         f"{length} patches (floor({length} * {mask_ratio}) = 0); "
                         f"it must be >= {1 / length:.6g}")
    device = _device_of(op, generator, device)
    # The first num_masked positions of a uniform random permutation, per row.
    keys = torch.rand((num_sequences, length), generator=generator, device=device,
                      dtype=torch.float64)
    masked = keys.argsort(dim=1)[:, :num_masked]
    mask = torch.zeros((num_sequences, length), dtype=torch.bool, device=device)
    return mask.scatter_(1, masked, True)
