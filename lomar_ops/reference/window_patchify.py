"""window_patchify, pure PyTorch:
out[b, w, r*K + c, (py*p + px)*C + ch] = f(images[b, ch, (row + r)*p + py, (col + c)*p + px], ch)
with (row, col) = coords[b, w] and, in the compute dtype (float64 if the images or the
output are float64, else float32):
    x = value / 255 for uint8 images, value / 65535 for uint16 images, else value
    f = (x - mean[ch]) / std[ch] with mean and std given, else x
rounded once to ``out_dtype`` (default float32 for uint8 and uint16 images, else the
images' dtype). Integer images are thus scaled to [0, 1] by their type's maximum (as
torchvision's ``ToDtype(torch.float32, scale=True)`` does), so mean/std are in those
units. Advanced indexing reads only the windows' pixels.

uint16 has few kernels in torch (2.3 and later; fewer on CUDA in older releases): the
windows are indexed in a 16-bit signed view of the same memory (int16, every kernel
has it) and the values brought back to 0..65535 exactly in int32 before the float
conversion, which is exact (16 bits fit float32's 24)."""

import torch

# The divisor of integer images (lomar_ops._validation.PIXEL_SCALE; the reference
# imports nothing of the package).
_SCALE = {torch.uint8: 255, torch.uint16: 65535}


def compute_dtype(in_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.dtype:
    """The dtype the pixel transform is computed in (every backend uses this rule)."""
    return torch.float64 if torch.float64 in (in_dtype, out_dtype) else torch.float32


def window_patchify_reference(images: torch.Tensor, coords: torch.Tensor, window_size: int,
                              patch_size: int, mean: torch.Tensor | None = None,
                              std: torch.Tensor | None = None,
                              out_dtype: torch.dtype | None = None) -> torch.Tensor:
    B, C, H, W = images.shape
    K, p = window_size, patch_size
    n = coords.shape[1]
    dtype = images.dtype
    scale = _SCALE.get(dtype)
    out_dtype = out_dtype or (torch.float32 if scale else dtype)
    transform = scale is not None or mean is not None or out_dtype != dtype
    if images.requires_grad and dtype in (torch.float16, torch.bfloat16):
        # Autograd's backward of indexing accumulates overlapping windows in the input's
        # dtype: index an fp32 copy so that it accumulates in fp32 (forward values are
        # exact copies either way). Only when a gradient is wanted: the copy is whole-image.
        images = images.float()
    if dtype == torch.uint16:
        images = images.view(torch.int16)  # the same bits; converted back below
    steps = torch.arange(K, device=coords.device)
    pix = torch.arange(p, device=coords.device)
    coords = coords.to(torch.int64)
    # Pixel rows (B, n, K, p) and columns (B, n, K, p) of every window.
    ys = (coords[..., 0, None] + steps)[..., None] * p + pix
    xs = (coords[..., 1, None] + steps)[..., None] * p + pix
    bs = torch.arange(B, device=coords.device).view(B, 1, 1, 1, 1, 1)
    # Index a (B, H, W, C) view: the result is (B, n, K[r], K[c], p[py], p[px], C).
    hwc = images.permute(0, 2, 3, 1)
    out = hwc[bs, ys.view(B, n, K, 1, p, 1), xs.view(B, n, 1, K, 1, p)]
    if dtype == torch.uint16:
        out = out.to(torch.int32) & 0xFFFF  # 0..65535, exactly
    if transform:
        out = out.to(compute_dtype(dtype, out_dtype))
        if scale:
            out = out / scale
        if mean is not None:
            # Channel is the last axis. mean/std may come from any device (a few values).
            mean, std = (t.to(device=out.device, dtype=out.dtype) for t in (mean, std))
            out = (out - mean) / std
    return out.reshape(B, n, K * K, p * p * C).to(out_dtype)
