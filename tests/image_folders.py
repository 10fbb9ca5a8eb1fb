"""Small ImageFolder-layout sets for the fine-tuning tests: one sub-folder per class."""

import torch
from PIL import Image

CLASSES = ("red", "green", "blue")


def write_folder(root, per_class, size=32, seed=0):
    """Noisy images tinted by class: learnable, different per index."""
    g = torch.Generator().manual_seed(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = torch.randint(0, 120, (size, size, 3), generator=g, dtype=torch.uint8)
            img[..., c] += 120
            Image.fromarray(img.numpy()).save(root / name / f"{i}.png")
