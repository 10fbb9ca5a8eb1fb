"""The DALL-E dVAE encoder architecture BEiT's tokenizer uses (Ramesh et al.,
"Zero-Shot Text-to-Image Generation"): its cost is part of a BEiT step, so the
throughput benchmark runs it (random weights unless a checkpoint is loaded).

7x7 conv 3 -> 256, four groups of two bottleneck residual blocks (widths 256,
512, 1024, 2048; residual path 3x3, 3x3, 3x3, 1x1 convs at width out/4, scaled
by 1 / (number of blocks)^2), max-pool after groups 1 to 3, ReLU, 1x1 conv to
the 8192-way vocabulary: about 54M parameters. A 112x112 input gives 14x14
tokens."""

from __future__ import annotations

import torch
from torch import nn


class EncoderBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__()
        hid = n_out // 4
        self.post_gain = 1.0 / n_layers ** 2
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(
            nn.ReLU(), nn.Conv2d(n_in, hid, 3, padding=1),
            nn.ReLU(), nn.Conv2d(hid, hid, 3, padding=1),
            nn.ReLU(), nn.Conv2d(hid, hid, 3, padding=1),
            nn.ReLU(), nn.Conv2d(hid, n_out, 1))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DVAEEncoder(nn.Module):
    def __init__(self, n_hid: int = 256, blocks_per_group: int = 2, vocab_size: int = 8192,
                 in_chans: int = 3):
        super().__init__()
        n_layers = 4 * blocks_per_group
        widths = [n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid]
        layers = [nn.Conv2d(in_chans, n_hid, 7, padding=3)]
        n_in = n_hid
        for g, width in enumerate(widths):
            for b in range(blocks_per_group):
                layers.append(EncoderBlock(n_in if b == 0 else width, width, n_layers))
            n_in = width
            if g < 3:
                layers.append(nn.MaxPool2d(2))
        layers += [nn.ReLU(), nn.Conv2d(widths[-1], vocab_size, 1)]
        self.blocks = nn.Sequential(*layers)
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, vocab, H/8, W/8)."""
        return self.blocks(x)

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> visual token ids (B, H/8 * W/8), the BEiT targets."""
        return self(x).argmax(dim=1).flatten(1)
