"""Small tiled pyramids for the tests of the tiled-image path, written with tifffile."""

import numpy as np
import tifffile
import torch
import torch.nn.functional as F


def pyramid(levels: int = 4, size=(1536, 1280), tile=64, background=False, seed=0):
    """Level 0 and its 2x reductions (box mean) as (H, W, 3) uint8 arrays: smooth noise,
    or dark 'tissue' blocks on a white background."""
    g = np.random.default_rng(seed)
    H, W = size
    if background:
        base = np.full((H, W, 3), 245, np.uint8)
        for _ in range(6):
            y, x = g.integers(0, H - 300), g.integers(0, W - 300)
            base[y:y + 300, x:x + 300] = g.integers(40, 150, (300, 300, 3), dtype=np.uint8)
    else:
        coarse = g.integers(0, 256, (H // 16, W // 16, 3)).astype(np.float32)
        base = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(H, W),
                             mode="bilinear")[0].permute(1, 2, 0).numpy()
        base = np.clip(base + g.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = [base]
    for _ in range(levels - 1):
        prev = torch.from_numpy(out[-1]).permute(2, 0, 1)[None].float()
        out.append(F.avg_pool2d(prev, 2)[0].permute(1, 2, 0).round().byte().numpy())
    return out


def write_pyramid(path, arrays, tile=64, mpp=None, photometric="rgb", planarconfig=None):
    """A tiled (deflate, lossless) RGB TIFF with the reductions as SubIFDs; other bands
    with ``photometric="minisblack"`` (``planarconfig`` "contig" or "separate")."""
    res = {} if planarconfig is None else {"planarconfig": planarconfig}
    if mpp is not None:  # pixels per centimetre
        res |= dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    if planarconfig == "separate":  # tifffile takes planar pixels as (bands, H, W)
        arrays = [a.transpose(2, 0, 1) for a in arrays]
    with tifffile.TiffWriter(path) as tif:
        tif.write(arrays[0], tile=(tile, tile), subifds=len(arrays) - 1, compression="zlib",
                  photometric=photometric, **res)
        for a in arrays[1:]:
            tif.write(a, tile=(tile, tile), subfiletype=1, compression="zlib",
                      photometric=photometric, planarconfig=planarconfig)
    return path
