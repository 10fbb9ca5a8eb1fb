"""``lomar visualize``: the paper's Fig. 5 for a pretrained checkpoint, as one PNG.

One row per image: the original with the sampled window outlined, the window
(K x K patches), the window with its masked patches grey, and the reconstruction
(visible patches pasted back, masked ones from the prediction). The window and
its mask come from the model's own sampler and forward (``coords``/``window_mask``),
drawn from a seeded generator. With norm_pix_loss the model predicts normalised
pixels: each predicted patch is mapped back with the mean and variance of its own
target patch, as MAE's visualisation does.

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
from .data import IMAGENET_MEAN, IMAGENET_STD, build_demo_photos, find_images, read_rgb
from .models import create_model, model_info

DEMO_PHOTO_SEED = 1  # other crops than the demo pretraining set (seed 0)
GREY = 0.5


def _model_spec(checkpoint: Path, model: str | None,
                model_kwargs: dict | None) -> tuple[dict, dict]:
    """(weights, spec) where spec holds model, model_kwargs, norm_pix_loss, input_size."""
    weights, _, config = read_weights(checkpoint)
    spec = {"model": model or config.get("model"),
            "model_kwargs": model_kwargs if model_kwargs is not None
            else config.get("model_kwargs", {}),
            "norm_pix_loss": config.get("norm_pix_loss", True),
            "input_size": (config.get("data") or {}).get("input_size"),
            # The run's normalisation (data.mean/std), ImageNet's when it set none.
            "mean": tuple((config.get("data") or {}).get("mean") or IMAGENET_MEAN),
            "std": tuple((config.get("data") or {}).get("std") or IMAGENET_STD)}
    if not spec["model"]:
        raise ValueError(f"visualize: checkpoint {checkpoint} does not name its model (no config "
                         f"inside or beside it); pass the model name (--model)")
    return weights, spec


def _preprocess(size: int, mean, std) -> v2.Compose:
    return v2.Compose([
        v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def _image_files(images, num_images: int, size: int, scratch: Path) -> list[Path]:
    if not images:  # a few of the offline demo photos
        folder = build_demo_photos(scratch, num_images=num_images, size=size, seed=DEMO_PHOTO_SEED)
        return find_images(folder)[0][:num_images]
    files = []
    for item in images:
        path = Path(item)
        files += find_images(path)[0] if path.is_dir() else [path]
    return files[:num_images]


def _to_pixels(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalised values (channel last) -> [0, 1] RGB."""
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype)
    std = torch.tensor(std, device=x.device, dtype=x.dtype)
    return (x * std + mean).clamp(0, 1)


def _window_image(patches: torch.Tensor, K: int, p: int) -> torch.Tensor:
    """(B, K*K, p*p*C) patches in (row, col, channel) order -> (B, K*p, K*p, C)."""
    B = patches.shape[0]
    grid = patches.reshape(B, K, K, p, p, -1).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(B, K * p, K * p, -1)


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, window_size: int, mask_ratio: float,
                generator: torch.Generator, pixel_mean=IMAGENET_MEAN,
                pixel_std=IMAGENET_STD) -> dict:
    """One window per image through the model: coords (B, 2), the window, masked
    window and reconstruction as (B, K*p, K*p, 3) pixels in [0, 1], the loss per image."""
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
    window = _to_pixels(_window_image(target, K, p), pixel_mean, pixel_std)
    recon = _to_pixels(_window_image(torch.where(masked, pred, target), K, p), pixel_mean,
                       pixel_std)
    grey = _window_image(masked.expand_as(target).float(), K, p) > 0
    return {"coords": coords[:, 0], "window": window, "masked": window.masked_fill(grey, GREY),
            "reconstruction": recon, "loss": losses}


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
              input_size: int | None = None) -> Path:
    """Write the reconstruction figure for ``checkpoint`` and return its path.

    images: image files and/or folders (default: a few offline demo photos);
    out: the PNG (default ``reconstruction.png`` beside the checkpoint);
    model/model_kwargs: for a .safetensors file without a config.yaml beside it;
    input_size: the side images are resized and centre-cropped to (default: the
    pretraining run's data.input_size, else 224)."""
    _check(num_images, window_size, mask_ratio)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"visualize: checkpoint not found: {checkpoint}")
    for item in images or ():
        if not Path(item).exists():
            raise FileNotFoundError(f"visualize: image file or folder not found: {item}")
    out = Path(out) if out is not None else checkpoint.parent / "reconstruction.png"
    weights, spec = _model_spec(checkpoint, model, model_kwargs)
    size = input_size or spec["input_size"] or 224
    try:
        model_info(spec["model"], "pretrain")
    except ValueError as exc:
        raise ValueError(f"visualize: {exc}") from None
    net = create_model(spec["model"], norm_pix_loss=spec["norm_pix_loss"], **spec["model_kwargs"])
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
        prep = _preprocess(size, spec["mean"], spec["std"])
        imgs = torch.stack([prep(read_rgb(f)) for f in files])
    parts = reconstruct(net, imgs, window_size, mask_ratio, torch.Generator().manual_seed(seed),
                        spec["mean"], spec["std"])
    parts["original"] = _to_pixels(imgs.permute(0, 2, 3, 1), spec["mean"], spec["std"])
    return _plot(parts, [f.name for f in files], window_size, net.patch_size, mask_ratio, out)


def _plot(parts, names, K, p, mask_ratio, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    originals = parts["original"]
    rows = len(originals)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), dpi=120, squeeze=False)
    titles = ["original", f"sampled window ({K}x{K} patches)",
              f"masked ({int(K * K * mask_ratio)} of {K * K})", "reconstruction"]
    for r in range(rows):
        top, left = (int(v) * p for v in parts["coords"][r])
        panels = [originals[r], parts["window"][r], parts["masked"][r], parts["reconstruction"][r]]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
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
