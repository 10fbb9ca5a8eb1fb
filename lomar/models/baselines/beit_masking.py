"""BEiT's block-wise masking (Bao et al., "BEiT: BERT Pre-Training of Image
Transformers"): rectangles of at least ``min_num_patches`` patches, aspect ratio
in [min_aspect, 1 / min_aspect], placed at random until ``num_masking_patches``
are masked (75 of 196 at 224, about 40%). As in BEiT, a block must add new
patches without exceeding the budget; the count can stop short of the target
when ten tries in a row add nothing."""

from __future__ import annotations

import math

import torch


class BlockMaskGenerator:
    def __init__(self, grid: tuple[int, int], num_masking_patches: int, min_num_patches: int = 16,
                 max_num_patches: int | None = None, min_aspect: float = 0.3,
                 max_aspect: float | None = None):
        height, width = grid
        if height < 1 or width < 1:
            raise ValueError(f"grid must be positive, got {grid}")
        if not 0 < num_masking_patches <= height * width:
            raise ValueError(f"num_masking_patches must be in [1, {height * width}], "
                             f"got {num_masking_patches}")
        if min_aspect <= 0:
            raise ValueError(f"min_aspect must be positive, got {min_aspect}")
        self.height, self.width = height, width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _uniform(self, lo: float, hi: float, g: torch.Generator | None) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    def _add_block(self, mask: torch.Tensor, budget: int, g, blocks: list) -> int:
        for _ in range(10):
            area = self._uniform(self.min_num_patches, budget, g)
            aspect = math.exp(self._uniform(*self.log_aspect, g))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top = int(torch.randint(0, self.height - h + 1, (), generator=g))
                left = int(torch.randint(0, self.width - w + 1, (), generator=g))
                region = mask[top:top + h, left:left + w]
                new = h * w - int(region.sum())
                if 0 < new <= budget:
                    region.fill_(True)
                    blocks.append((top, left, h, w, area, aspect))
                    return new
        return 0

    def sample(self, generator: torch.Generator | None = None):
        """(mask (H, W) bool, blocks [(top, left, h, w, target area, aspect)])."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        blocks: list = []
        count = 0
        while count < self.num_masking_patches:
            budget = min(self.num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, budget, generator, blocks)
            if added == 0:
                break
            count += added
        return mask, blocks

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(generator)[0]
