"""The data side of a LoMaR step through the fused ops, as a model runs it:
window_patchify -> patch-embedding linear map -> mask_substitute -> (a stand-in
encoder) -> masked_patch_loss, compiled with fullgraph=True (no graph breaks)
and equal to eager mode, on every backend that compiles on this machine."""

import pytest
import torch

import lomar_ops

from conftest import HAS_CUDA

B, C, H, W, P, K, N_WIN = 2, 3, 96, 128, 16, 4, 3


def _params(device):
    g = torch.Generator().manual_seed(0)
    embed = torch.nn.Linear(P * P * C, 32).to(device)
    head = torch.nn.Linear(32, P * P * C).to(device)
    mask_token = torch.randn(32, generator=g).to(device).requires_grad_(True)
    cls_token = torch.randn(32, generator=g).to(device).requires_grad_(True)
    return embed, head, mask_token, cls_token


def _step(images, coords, mask, embed, head, mask_token, cls_token, backend):
    patches = lomar_ops.window_patchify(images, coords, K, P, backend=backend)  # (B, n, K*K, p*p*C)
    target = patches.flatten(0, 1)                                               # (S, K*K, p*p*C)
    tokens = embed(target)
    x = lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
    x = torch.tanh(x + x.mean(dim=1, keepdim=True))  # stand-in encoder: tokens mix
    pred = head(x)[:, 1:]
    return lomar_ops.masked_patch_loss(pred, target, mask, backend=backend)


BACKENDS = [pytest.param("cpu", "cpu", id="cpu-cpu"), pytest.param("cpu", "torch", id="cpu-torch"),
            pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.gpu),
            pytest.param("cuda", "triton", id="cuda-triton", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_pipeline_compiles_fullgraph_and_matches_eager(device, backend):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(B, C, H, W, generator=g).to(device)
    coords = lomar_ops.sample_windows(B, H // P, W // P, N_WIN, K, generator=g).to(device)
    mask = lomar_ops.sample_window_masks(B * N_WIN, K, 0.75, generator=g).to(device)
    embed, head, mask_token, cls_token = _params(device)
    params = list(embed.parameters()) + list(head.parameters()) + [mask_token, cls_token]
    args = (images, coords, mask, embed, head, mask_token, cls_token, backend)

    eager_loss = _step(*args)
    eager_grads = torch.autograd.grad(eager_loss, params)
    compiled = torch.compile(_step, fullgraph=True, dynamic=False)
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(bool(gr.abs().sum() > 0) for gr in grads)


@pytest.mark.skipif(HAS_CUDA, reason="the CPU machine's cross-backend check")
def test_cpu_and_torch_backends_agree_on_the_pipeline():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(B, C, H, W, generator=g)
    coords = lomar_ops.sample_windows(B, H // P, W // P, N_WIN, K, generator=g)
    mask = lomar_ops.sample_window_masks(B * N_WIN, K, 0.75, generator=g)
    embed, head, mask_token, cls_token = _params("cpu")
    losses = [_step(images, coords, mask, embed, head, mask_token, cls_token, b)
              for b in ("cpu", "torch")]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
