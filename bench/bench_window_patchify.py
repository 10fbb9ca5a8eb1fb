"""window_patchify benchmark: forward and forward+backward, every backend on the
device, for the SAME windows (4 windows of 7x7 patches, p = 16, drawn on the
224x224 grid) in images of 224, 448 and 1024 pixels a side.

The forward reads only the windows' pixels, so its cost must not grow with the
image: each record carries ``vs_224``, its time over the 224 time of the same
backend and mode (about 1 expected). The backward writes a whole-image gradient
(zero outside the windows), so fwd+bwd grows with the image; images normally
need no gradient.

GB/s counts the fewest bytes the op must move (bench/common.py). Forward: read
the pixels the windows cover, once each (windows drawn independently overlap:
the 4 windows of 7x7 drawn here cover 112 patches per image on average, not
4 x 49 = 196), and the corners; write the output:

    covered_patches * p*p*3 * e + B*n*2 * 8 + B*n*K*K*p*p*3 * e

Backward: read grad_out and the corners; write the whole image's gradient:

    B*n*K*K*p*p*3 * e + B*n*2 * 8 + B*3*H*W * e

(e: bytes per element; covered_patches summed over the images). fwd+bwd is their
sum. Until 2026-12 the forward was counted as reading n*K*K patches per image,
overlaps twice.

Integer images (mode "fwd-norm"): what the input pipeline hands the model, uint8 or
uint16 (C = 3, and C = 6 for multi-band data), normalised in the gather (per-channel
mean/std, value / 255 or / 65535) to float32 (bfloat16 on CUDA), in two layouts of
the same B x n windows: "windows" (case win112), what the window pipeline ships, B*n
windows of (C, K*p, K*p) pixels, each read whole from its corner (0, 0), as the model's
patchify does; "img448", B whole 448 images and their windows' corners. The loader
ships 1 byte per sample value for uint8, 2 for uint16 (float32: 4): per image n
windows x C x (K*p)^2 samples plus the (n, 2) int64 corners (``shipped_bytes_per_image``).
Each record carries ``ns_per_pixel`` (the median over the window pixels gathered, each C
samples) and ``vs_uint8`` (its time over the uint8 time of the same backend, layout and
C: the same pixels, so the per-pixel ratio). Bytes: the covered pixels read at the
images' element size, the corners, the output written at its own."""

from __future__ import annotations

import pytest
import torch

import lomar_ops
from common import TINY, backend_params, device_name, gbps, time_case

WINDOWS, K, P = 4, 7, 16
SIZES = [224, 448, 1024]
BATCH = {"cuda": 256, "cpu": 64, "tiny": 2}
_MEDIANS: dict[tuple, float] = {}


def covered_patches(coords: torch.Tensor, grid: int, window: int) -> int:
    """Patches covered by at least one window, summed over the images: coords (B, n, 2)."""
    B, n, _ = coords.shape
    offs = torch.arange(window, device=coords.device)
    rows = (coords[..., 0, None] + offs).reshape(B, n, window, 1)
    cols = (coords[..., 1, None] + offs).reshape(B, n, 1, window)
    flat = (rows * grid + cols).reshape(B, -1)
    covered = torch.zeros(B, grid * grid, dtype=torch.bool, device=coords.device)
    covered.scatter_(1, flat, True)
    return int(covered.sum())


def forward_bytes(covered: int, coords_bytes: int, out_elems: int, elt: int) -> int:
    return covered * P * P * 3 * elt + coords_bytes + out_elems * elt


def backward_bytes(out_elems: int, coords_bytes: int, image_elems: int, elt: int) -> int:
    return out_elems * elt + coords_bytes + image_elems * elt


@pytest.mark.parametrize("size", SIZES)  # innermost: 224 runs first for each backend/mode
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_window_patchify(benchmark, record, device, backend, mode, size):
    reason = lomar_ops.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    B = BATCH["tiny" if TINY else device.type]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    # The same windows at every size: drawn on the 224 grid (14 x 14 patches).
    coords = lomar_ops.sample_windows(B, 224 // P, 224 // P, WINDOWS, K, generator=g)
    images = torch.randn(B, 3, size, size, device=device, dtype=dtype,
                         requires_grad=mode != "fwd")
    out_elems = B * WINDOWS * K * K * P * P * 3
    elt = images.element_size()
    coords_bytes = coords.numel() * coords.element_size()
    covered = covered_patches(coords, size // P, K)
    nbytes = forward_bytes(covered, coords_bytes, out_elems, elt)

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                lomar_ops.window_patchify(images, coords, K, P, backend=backend)
    else:
        grad = torch.randn(B, WINDOWS, K * K, P * P * 3, device=device, dtype=dtype)
        nbytes += backward_bytes(out_elems, coords_bytes, images.numel(), elt)

        def fn():
            out = lomar_ops.window_patchify(images, coords, K, P, backend=backend)
            torch.autograd.grad(out, images, grad)

    median_ms, timer = time_case(benchmark, fn, device)
    _MEDIANS[(device.type, backend, mode, size)] = median_ms
    base = _MEDIANS.get((device.type, backend, mode, 224))
    vs_224 = round(median_ms / base, 3) if base else None
    rate = gbps(nbytes, median_ms)
    benchmark.extra_info.update(gbps=round(rate, 2), vs_224=vs_224)
    record(op="window_patchify", backend=backend, mode=mode, case=f"img{size}",
           device=device.type, device_name=device_name(device),
           dtype=str(dtype).replace("torch.", ""),
           shape=f"B={B},C=3,H=W={size},n={WINDOWS},K={K},p={P},covered_patches={covered}",
           median_ms=round(median_ms, 4), bytes=nbytes, gbps=round(rate, 2), vs_224=vs_224,
           timer=timer)


INT_SIZE = 448
_INT_MEDIANS: dict[tuple, float] = {}


def random_integer_images(shape: tuple, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Uniform over the whole range of uint8 or uint16 (0..255, 0..65535)."""
    top = 256 if dtype == torch.uint8 else 65536
    values = torch.randint(0, top, shape, generator=g, dtype=torch.int32)
    if dtype == torch.uint8:
        return values.to(torch.uint8)
    # Through int16: torch has few uint16 kernels.
    return torch.where(values > 32767, values - 65536, values).to(torch.int16).view(torch.uint16)


def integer_case(layout: str, B: int, channels: int, dtype: torch.dtype, g: torch.Generator):
    """(images, coords, covered patches, case label) of one integer-image layout:
    "windows", what the window pipeline ships (B*n windows (C, K*p, K*p), one corner
    each, every pixel read); "img448", B whole 448 images and their n windows."""
    if layout == "windows":
        images = random_integer_images((B * WINDOWS, channels, K * P, K * P), dtype, g)
        coords = torch.zeros(B * WINDOWS, 1, 2, dtype=torch.int32)
        return images, coords, B * WINDOWS * K * K, f"win{K * P}"
    coords = lomar_ops.sample_windows(B, 224 // P, 224 // P, WINDOWS, K, generator=g)
    images = random_integer_images((B, channels, INT_SIZE, INT_SIZE), dtype, g)
    return images, coords, covered_patches(coords, INT_SIZE // P, K), f"img{INT_SIZE}"


def shipped_bytes(channels: int, dtype: torch.dtype) -> int:
    """Bytes the window pipeline ships per image: its n windows (C, K*p, K*p) at the
    file's sample size and their corners ((n, 2) int64, lomar.data.pipelines)."""
    return WINDOWS * channels * (K * P) ** 2 * dtype.itemsize + WINDOWS * 2 * 8


@pytest.mark.parametrize("images_dtype", [torch.uint8, torch.uint16], ids=str)  # innermost
@pytest.mark.parametrize("channels", [3, 6])
@pytest.mark.parametrize("layout", ["windows", "img448"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_window_patchify_integer_images(benchmark, record, device, backend, layout, channels,
                                        images_dtype):
    reason = lomar_ops.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    B = BATCH["tiny" if TINY else device.type]
    out_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    images, coords, covered, case = integer_case(layout, B, channels, images_dtype, g)
    images, coords = images.to(device), coords.to(device)
    mean = [0.5] * channels
    std = [0.25] * channels
    pixels = B * WINDOWS * K * K * P * P
    out_elems = pixels * channels
    coords_bytes = coords.numel() * coords.element_size()
    nbytes = (covered * P * P * channels * images.element_size() + coords_bytes
              + out_elems * out_dtype.itemsize)

    def fn():
        lomar_ops.window_patchify(images, coords, K, P, mean=mean, std=std, out_dtype=out_dtype,
                                  backend=backend)

    median_ms, timer = time_case(benchmark, fn, device)
    dtype_name = str(images_dtype).replace("torch.", "")
    _INT_MEDIANS[(device.type, backend, layout, channels, dtype_name)] = median_ms
    base = _INT_MEDIANS.get((device.type, backend, layout, channels, "uint8"))
    vs_uint8 = round(median_ms / base, 3) if base else None
    rate = gbps(nbytes, median_ms)
    ns_per_pixel = round(median_ms * 1e6 / pixels, 3)
    benchmark.extra_info.update(gbps=round(rate, 2), ns_per_pixel=ns_per_pixel,
                                vs_uint8=vs_uint8)
    height = K * P if layout == "windows" else INT_SIZE
    record(op="window_patchify", backend=backend, mode="fwd-norm",
           case=f"{case}-{'u8' if dtype_name == 'uint8' else 'u16'}-C{channels}",
           device=device.type, device_name=device_name(device), dtype=dtype_name,
           out_dtype=str(out_dtype).replace("torch.", ""),
           shape=f"B={images.shape[0]},C={channels},H=W={height},n={coords.shape[1]},K={K},"
                 f"p={P},covered_patches={covered}",
           median_ms=round(median_ms, 4), bytes=nbytes, gbps=round(rate, 2),
           ns_per_pixel=ns_per_pixel, vs_uint8=vs_uint8,
           bytes_per_sample=images.element_size(),
           shipped_bytes_per_image=shipped_bytes(channels, images_dtype), timer=timer)
