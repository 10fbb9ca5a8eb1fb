"""``lomar visualize``: the paper's Fig. 5 for a pretrained checkpoint, as one PNG.

One row per image: the original with the sampled window outlined, the window
(K x K patches), the window with its masked patches grey, and the reconstruction
(visible patches pasted back, masked ones from the prediction). The window and
its mask come from the model's own sampler and forward (``coords``/``window_mask``),
drawn from a seeded generator. With norm_pix_loss the model predicts normalised
pixels: each predicted patch is mapped back with the mean and variance of its own
target patch, as MAE's visualisation does.

Images are read as the run read them in training: 8-bit RGB photos for an RGB run
(``data.bands`` rgb), the files' own bands and bit depth otherwise (``data.bands``
all or a list: :func:`lomar.data.read_image`, the run's band selection, values /
255 or / 65535 (float32 as they are), then the run's per-band mean and std, as
training normalised them). Three of the model's bands are drawn as red, green and blue (one as
grey), each stretched from its 2nd to its 98th percentile over the original image,
the same mapping for the window, its masked copy and the reconstruction; 16-bit data
would otherwise be near black (12-bit values fill 1/16 of the range).

Checkpoints: ``checkpoint-*.pt`` written by ``lomar pretrain`` (the model name and
arguments come from the config stored inside), or ``model.safetensors`` with the
run's ``config.yaml`` beside it or an explicit ``model`` name. Both are read
without unpickling code (``weights_only`` / safetensors)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

import lomar_ops

from .checkpoint import read_weights
from .data import (IMAGENET_MEAN, IMAGENET_STD, build_demo_photos, find_images, read_image,
                   read_rgb)
from .data.pipelines import check_bands, read_bands
from .data.stats import PIXEL_SCALE
from .models import create_model, model_info

DEMO_PHOTO_SEED = 1  # other crops than the demo pretraining set (seed 0)
GREY = 0.5
STRETCH_PERCENTILES = (0.02, 0.98)  # of each drawn band, mapped to black and white


def _model_spec(checkpoint: Path, model: str | None,
                model_kwargs: dict | None) -> tuple[dict, dict]:
    """(weights, spec) where spec holds model, model_kwargs, norm_pix_loss, input_size,
    the run's mean/std and bands (data.bands: "rgb", "all" or a tuple of indices)."""
    weights, _, config = read_weights(checkpoint)
    data = config.get("data") or {}
    kwargs = model_kwargs if model_kwargs is not None else config.get("model_kwargs", {})
    spec = {"model": model or config.get("model"), "model_kwargs": kwargs,
            "norm_pix_loss": config.get("norm_pix_loss", True),
            "input_size": data.get("input_size"),
            # The run's normalisation: data.mean/std (or model_kwargs.pixel_mean/std),
            # ImageNet's when it set none.
            "mean": tuple(data.get("mean") or kwargs.get("pixel_mean") or IMAGENET_MEAN),
            "std": tuple(data.get("std") or kwargs.get("pixel_std") or IMAGENET_STD)}
    if not spec["model"]:
        raise ValueError(f"visualize: checkpoint {checkpoint} does not name its model (no config "
                         f"inside or beside it); pass the model name (--model)")
    try:
        spec["bands"] = check_bands(data.get("bands", "rgb"))
    except ValueError as exc:
        raise ValueError(f"visualize: checkpoint {checkpoint}: data.{exc}") from None
    channels = spec["model_kwargs"].get("in_chans", 3)
    if spec["bands"] == "rgb" and channels != 3:
        raise ValueError(f"visualize: checkpoint {checkpoint}: the model takes {channels} "
                         f"band(s) and no run config inside or beside it says which "
                         f"(data.bands, data.mean/std): put the run's config.yaml beside it")
    for key in ("mean", "std"):
        if len(spec[key]) != channels:
            raise ValueError(f"visualize: checkpoint {checkpoint}: data.{key} has "
                             f"{len(spec[key])} value(s), the model takes {channels} band(s)")
    return weights, spec


def _preprocess(size: int, mean, std) -> v2.Compose:
    return v2.Compose([
        v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def _to_model_units(pixels: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """A file's (C, H, W) uint8/uint16/float32 bands -> (C, size, size) normalised as
    training normalised them (value / 255 or / 65535, float32 as it is, then mean/std
    per band), resized and centre-cropped in those units (bicubic; integer files
    clamped to their range, as their resampled samples are)."""
    x = pixels.to(torch.float32) / PIXEL_SCALE[pixels.dtype]
    x = v2.functional.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = v2.functional.center_crop(x, size)
    if not pixels.dtype.is_floating_point:
        x = x.clamp(0, 1)
    return v2.functional.normalize(x, mean, std)


def _read_images(files: list[Path], spec: dict, size: int) -> torch.Tensor:
    """The (B, C, size, size) normalised images, each file read as the run read its
    training data; a file the run could not have trained on is refused by name."""
    bands, channels = spec["bands"], spec["model_kwargs"].get("in_chans", 3)
    if bands == "rgb":
        prep = _preprocess(size, spec["mean"], spec["std"])
        for f in files:  # all checked before any is preprocessed
            dtype = read_image(f).dtype
            if dtype != torch.uint8:
                raise ValueError(f"visualize: {f} holds {str(dtype).replace('torch.', '')} "
                                 f"samples, and this run was pretrained on 8-bit RGB "
                                 f"(data.bands rgb reads every file as an 8-bit RGB photo, as "
                                 f"its training did): give 8-bit images, or visualise a run "
                                 f"pretrained with data.bands all or a list of bands")
        return torch.stack([prep(read_rgb(f)) for f in files])
    pixels, dtype = [], None
    for f in files:  # as training: the run's bands and band count, one sample type
        try:
            pixels.append(read_bands(f, bands, channels, dtype))
        except ValueError as exc:
            raise ValueError(f"visualize: {exc}") from None
        dtype = pixels[-1].dtype
    return torch.stack([_to_model_units(p, size, spec["mean"], spec["std"]) for p in pixels])


def _bands_text(bands) -> str:
    return bands if isinstance(bands, str) else str(list(bands))


def _composite_bands(bands, channels: int) -> tuple[int, ...]:
    """The model bands drawn: three (red, green, blue) or one (grey); by default the
    first three, or the first alone when the model takes fewer than three."""
    if bands is None:
        return (0, 1, 2) if channels >= 3 else (0,)
    bands = tuple(bands) if isinstance(bands, (list, tuple)) else (bands,)
    if len(bands) not in (1, 3) or not all(isinstance(b, int) and not isinstance(b, bool)
                                           for b in bands):
        raise ValueError(f"visualize: bands must be three band indices (drawn as red, green, "
                         f"blue) or one (drawn grey), got {list(bands)}")
    outside = [b for b in bands if not 0 <= b < channels]
    if outside:
        raise ValueError(f"visualize: bands {list(bands)}: band {outside[0]} does not exist; "
                         f"the model takes {channels} band(s), 0 to {channels - 1}")
    return bands


def composite(pixels: torch.Tensor, bands) -> torch.Tensor:
    """(..., C) pixels -> (..., len(bands)): the drawn bands, in the order given."""
    return pixels[..., list(bands)]


def stretch_limits(original: torch.Tensor, percentiles=STRETCH_PERCENTILES):
    """(low, high), each (B, 1, 1, c): per image and band of (B, H, W, c) pixels, the
    values at the two percentiles (fractions in [0, 1], linear interpolation)."""
    values = original.flatten(1, 2).float()                      # (B, H*W, c)
    q = torch.tensor(percentiles, dtype=values.dtype, device=values.device)
    low, high = torch.quantile(values, q, dim=1)[:, :, None, None, :]
    return low, high


def contrast_stretch(pixels: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """low -> 0, high -> 1, linearly, clamped to [0, 1]. A band with high == low (one
    value over the image) is left as it is: no range to stretch."""
    flat = high <= low
    low = torch.where(flat, torch.zeros_like(low), low)
    span = torch.where(flat, torch.ones_like(high), high - low)
    return ((pixels - low) / span).clamp(0, 1)


def _image_files(images, num_images: int, size: int, scratch: Path) -> list[Path]:
    if not images:  # a few of the offline demo photos
        folder = build_demo_photos(scratch, num_images=num_images, size=size, seed=DEMO_PHOTO_SEED)
        return find_images(folder)[0][:num_images]
    files = []
    for item in images:
        path = Path(item)
        files += find_images(path)[0] if path.is_dir() else [path]
    return files[:num_images]


def _to_pixels(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               clamp: bool = True) -> torch.Tensor:
    """Normalised values (channel last) -> pixels (value / 255, / 65535 for 16-bit
    files, float32 files' values as they are), clamped to [0, 1] unless told not to."""
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype)
    std = torch.tensor(std, device=x.device, dtype=x.dtype)
    x = x * std + mean
    return x.clamp(0, 1) if clamp else x


def _window_image(patches: torch.Tensor, K: int, p: int) -> torch.Tensor:
    """(B, K*K, p*p*C) patches in (row, col, channel) order -> (B, K*p, K*p, C)."""
    B = patches.shape[0]
    grid = patches.reshape(B, K, K, p, p, -1).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(B, K * p, K * p, -1)


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, window_size: int, mask_ratio: float,
                generator: torch.Generator, pixel_mean=IMAGENET_MEAN,
                pixel_std=IMAGENET_STD, clamp: bool = True) -> dict:
    """One window per image through the model: coords (B, 2), the window, masked
    window and reconstruction as (B, K*p, K*p, C) pixels (in [0, 1] with ``clamp``),
    the masked pixels (B, K*p, K*p) bool, the loss per image."""
    K, p = window_size, model.patch_size
    coords, mask = model.sample(imgs, K, 1, mask_ratio, generator=generator)
    _, pred, mask = model(imgs, K, 1, mask_ratio, coords=coords, window_mask=mask)
    target = lomar_ops.window_patchify(imgs, coords, K, p).flatten(0, 1)   # (B, L, p*p*C)
    pred, mask = pred.flatten(0, 1).float(), mask.flatten(0, 1)
    losses = torch.stack([lomar_ops.masked_patch_loss(pred[i:i + 1], target[i:i + 1], mask[i:i + 1],
                                                      norm_pix=model.norm_pix_loss)
                          for i in range(len(pred))])
    if model.norm_pix_loss:  # back to pixels with each target patch's own statistics
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the loss uses
        pred = pred * (var + 1e-6).sqrt() + mean
    masked = mask[..., None]
    window = _to_pixels(_window_image(target, K, p), pixel_mean, pixel_std, clamp)
    recon = _to_pixels(_window_image(torch.where(masked, pred, target), K, p), pixel_mean,
                       pixel_std, clamp)
    grey = _window_image(masked.expand_as(target).float(), K, p) > 0
    return {"coords": coords[:, 0], "window": window, "masked": window.masked_fill(grey, GREY),
            "reconstruction": recon, "mask": grey[..., 0], "loss": losses}


def _check(num_images, window_size, mask_ratio):
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"visualize: num_images must be an integer >= 1, got {num_images!r}")
    if not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"visualize: window_size must be an integer >= 1, got {window_size!r}")
    if not 0 < mask_ratio < 1 or int(window_size ** 2 * mask_ratio) == 0:
        raise ValueError(f"visualize: mask_ratio must be in (0, 1) and mask at least one of the "
                         f"{window_size ** 2} patches of a window, got {mask_ratio}")


def visualize(checkpoint: str | Path, images=None, out: str | Path | None = None, *,
              num_images: int = 4, window_size: int = 7, mask_ratio: float = 0.8, seed: int = 0,
              model: str | None = None, model_kwargs: dict | None = None,
              input_size: int | None = None, bands=None, stretch: bool | None = None) -> Path:
    """Write the reconstruction figure for ``checkpoint`` and return its path.

    images: image files and/or folders (default: a few offline demo photos, for an RGB
    run only: they are RGB);
    out: the PNG (default ``reconstruction.png`` beside the checkpoint);
    model/model_kwargs: for a .safetensors file without a config.yaml beside it;
    input_size: the side images are resized and centre-cropped to (default: the
    pretraining run's data.input_size, else 224);
    bands: the model's bands drawn, three indices (red, green, blue) or one (grey);
    default the first three, the first alone for a model of one or two bands;
    stretch: each drawn band from its 2nd-98th percentile over the original image to
    black-white (None: on for runs of the files' own bands, off for RGB runs)."""
    _check(num_images, window_size, mask_ratio)
    if stretch not in (None, True, False):
        raise ValueError(f"visualize: stretch must be True, False or None (auto), got {stretch!r}")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"visualize: checkpoint not found: {checkpoint}")
    for item in images or ():
        if not Path(item).exists():
            raise FileNotFoundError(f"visualize: image file or folder not found: {item}")
    out = Path(out) if out is not None else checkpoint.parent / "reconstruction.png"
    weights, spec = _model_spec(checkpoint, model, model_kwargs)
    drawn = _composite_bands(bands, spec["model_kwargs"].get("in_chans", 3))
    if spec["bands"] != "rgb" and not images:
        raise ValueError(f"visualize: this run was pretrained on its files' own bands "
                         f"(data.bands={_bands_text(spec['bands'])}) and the demo photos are "
                         f"RGB: give its images (--images FILE_OR_FOLDER ...)")
    if stretch is None:
        stretch = spec["bands"] != "rgb"
    size = input_size or spec["input_size"] or 224
    try:
        model_info(spec["model"], "pretrain")
    except ValueError as exc:
        raise ValueError(f"visualize: {exc}") from None
    # The images reach the model normalised (float), so its pixel_mean/std go unused;
    # they are the run's, of its band count.
    net = create_model(spec["model"], norm_pix_loss=spec["norm_pix_loss"],
                       **{"pixel_mean": spec["mean"], "pixel_std": spec["std"],
                          **spec["model_kwargs"]})
    grid = size // net.patch_size
    if size % net.patch_size or window_size > grid:
        raise ValueError(f"visualize: window_size {window_size} must fit the {grid}x{grid} patch "
                         f"grid of {size}x{size} images (input_size a multiple of the patch "
                         f"size {net.patch_size})")
    net.load_state_dict(weights)
    net.eval()
    with tempfile.TemporaryDirectory() as scratch:
        files = _image_files(images, num_images, size, Path(scratch))
        if not files:
            raise ValueError(f"visualize: no images found in {list(images)}")
        imgs = _read_images(files, spec, size)
    # Unclamped until drawn: a float file's values need not lie in [0, 1].
    parts = reconstruct(net, imgs, window_size, mask_ratio, torch.Generator().manual_seed(seed),
                        spec["mean"], spec["std"], clamp=False)
    parts["original"] = _to_pixels(imgs.permute(0, 2, 3, 1), spec["mean"], spec["std"],
                                   clamp=False)
    panels = {k: composite(parts[k], drawn) for k in ("original", "window", "reconstruction")}
    if stretch:  # one mapping per image and band, from the original, for all four panels
        low, high = stretch_limits(panels["original"])
        panels = {k: contrast_stretch(v, low, high) for k, v in panels.items()}
    else:
        panels = {k: v.clamp(0, 1) for k, v in panels.items()}
    panels["masked"] = panels["window"].masked_fill(parts["mask"][..., None], GREY)
    shown = None
    if spec["bands"] != "rgb" or bands is not None or stretch:
        shown = (f"band{'s' if len(drawn) > 1 else ''} {', '.join(map(str, drawn))}"
                 f"{'' if len(drawn) > 1 else ' grey'}"
                 f"{'; 2-98% stretch' if stretch else ''}")
    return _plot({**parts, **panels}, [f.name for f in files], window_size, net.patch_size,
                 mask_ratio, out, shown)


def _plot(parts, names, K, p, mask_ratio, out: Path, shown: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    originals = parts["original"]
    rows = len(originals)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), dpi=120, squeeze=False)
    titles = ["original" + (f" ({shown})" if shown else ""), f"sampled window ({K}x{K} patches)",
              f"masked ({int(K * K * mask_ratio)} of {K * K})", "reconstruction"]
    for r in range(rows):
        top, left = (int(v) * p for v in parts["coords"][r])
        panels = [originals[r], parts["window"][r], parts["masked"][r], parts["reconstruction"][r]]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            if panel.shape[-1] == 1:  # one band: grey, 0 black and 1 white
                ax.imshow(panel[..., 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(panel.cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r][0].add_patch(Rectangle((left - 0.5, top - 0.5), K * p, K * p, fill=False,
                                       edgecolor="yellow", linewidth=1.5))
        axes[r][0].set_ylabel(names[r], fontsize=7)
        axes[r][3].set_xlabel(f"loss on masked patches {float(parts['loss'][r]):.3f}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
