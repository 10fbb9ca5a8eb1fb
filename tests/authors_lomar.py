"""The authors' LoMaR pretraining forward, written from docs/method.md (the step,
iRPE, their state-dict names) with their parameter names and layouts, independently of
lomar.models: it embeds the whole image with a convolution and gathers window
tokens (as their code does), computes iRPE buckets with its own scalar loops,
and reads the iRPE table in their (heads, head_dim, buckets) layout. Used only to
check that convert_official + lomar.models reproduce their outputs."""

import math

import torch
import torch.nn.functional as F


def _piecewise(x: int, ratio: float = 1.9) -> int:
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    if abs(x) <= alpha:
        return round(x)
    v = round(alpha + math.log(abs(x) / alpha) / math.log(gamma / alpha) * (beta - alpha))
    return int(math.copysign(min(beta, v), x))


def bucket_map(K: int) -> torch.Tensor:
    pos = [(r, c) for r in range(K) for c in range(K)]
    ids = torch.full((1 + K * K, 1 + K * K), 49, dtype=torch.long)
    for a, (ri, ci) in enumerate(pos):
        for b, (rj, cj) in enumerate(pos):
            ids[1 + a, 1 + b] = (_piecewise(ri - rj) + 3) * 7 + (_piecewise(ci - cj) + 3)
    return ids


def forward(sd: dict, imgs, coords, mask, K, p, depth, heads, norm_pix=True):
    """(loss, pred (S, K*K, p*p*C)) of the authors' model with state dict ``sd``."""
    B = imgs.shape[0]
    n = coords.shape[1]
    emb = F.conv2d(imgs, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    D = emb.shape[1]
    windows, targets = [], []
    for b in range(B):
        for w in range(n):
            r0, c0 = int(coords[b, w, 0]), int(coords[b, w, 1])
            windows.append(emb[b, :, r0:r0 + K, c0:c0 + K].reshape(D, K * K).t())
            pix = imgs[b, :, r0 * p:(r0 + K) * p, c0 * p:(c0 + K) * p]
            pix = pix.reshape(-1, K, p, K, p).permute(1, 3, 2, 4, 0)  # (K, K, p, p, C)
            targets.append(pix.reshape(K * K, -1))
    x = torch.stack(windows)
    target = torch.stack(targets)
    S = x.shape[0]
    x = torch.where(mask[..., None], sd["mask_token"].view(1, 1, D), x)
    x = torch.cat([sd["cls_token"].view(1, 1, D).expand(S, 1, D), x], dim=1)
    ids = bucket_map(K)
    d = D // heads
    for i in range(depth):
        pre = f"blocks.{i}."
        h = F.layer_norm(x, (D,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], 1e-6)
        qkv = F.linear(h, sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"])
        q, k, v = qkv.reshape(S, -1, 3, heads, d).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * d ** -0.5
        table = sd[pre + "attn.rpe_k.lookup_table_weight"]  # (1 or heads, d, buckets)
        lookup = q @ table  # (S, heads, N, buckets)
        attn = attn + torch.gather(lookup, 3, ids.expand(S, heads, -1, -1))
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(S, -1, D)
        x = x + F.linear(out, sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
        h = F.layer_norm(x, (D,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"])),
                     sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])
        x = x + h
    x = F.layer_norm(x, (D,), sd["norm.weight"], sd["norm.bias"], 1e-6)
    pred = F.linear(x, sd["encoder_pred.weight"], sd["encoder_pred.bias"])[:, 1:]
    if norm_pix:
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum(), pred
