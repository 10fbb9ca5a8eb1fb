"""Every model family under CPU autocast (bfloat16 and float16), the path the jobs take
on a GPU (bf16 autocast on CUDA): forward and backward run, the loss is float32 and
equals the float32 model's loss within the low precision's error, every parameter
gets a finite gradient close to float32's. The loss (masked_patch_loss) runs in
float32 under autocast, as mse_loss does."""

import pytest
import torch

import lomar_ops
from lomar.models import create_model, model_names

# |loss(autocast) - loss(fp32)| / |loss(fp32)|: the inputs of every matmul are rounded
# to 8 (bf16) or 11 (fp16) significant bits, sums stay fp32, and the loss averages
# many such errors: one unit of each format's rounding (2^-8, 2^-11) bounds it
# (seen: 3e-4 and 5e-5 at most over these models).
LOSS_RTOL = {torch.bfloat16: 4e-3, torch.float16: 5e-4}
# ||grad(autocast) - grad(fp32)|| / ||grad(fp32)|| over all parameters together; the
# backward rounds again at every matmul (seen: 0.058 and 0.001 at most).
GRAD_RTOL = {torch.bfloat16: 1e-1, torch.float16: 5e-3}
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def _pretrain_names():
    return [n for n in model_names() if n.startswith("lomar_vit_")]


def _tiny(name):
    """The registry's model at depth 1 (decoder depth 1), iRPE tables made non-zero."""
    kwargs = {"depth": 1}
    if "_dec" in name:
        kwargs["decoder_depth"] = 1
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    for param_name, param in model.named_parameters():
        if param_name.endswith("rpe_table"):
            torch.nn.init.normal_(param, std=0.1)
    return model


def _loss_and_grads(model, loss_fn, dtype):
    model.zero_grad(set_to_none=True)
    if dtype is None:
        loss = loss_fn()
    else:
        with torch.autocast("cpu", dtype=dtype):
            loss = loss_fn()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss, grads


def _compare(model, loss_fn, dtype):
    ref_loss, ref_grads = _loss_and_grads(model, loss_fn, None)
    loss, grads = _loss_and_grads(model, loss_fn, dtype)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    rel = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
    assert rel <= LOSS_RTOL[dtype], f"loss {loss.item()} vs fp32 {ref_loss.item()}: {rel:.2e}"
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient: {missing[:5]}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    diff = torch.cat([(grads[n].float() - ref_grads[n]).flatten() for n in grads])
    ref = torch.cat([ref_grads[n].flatten() for n in grads])
    err = float(diff.norm() / ref.norm())
    assert err <= GRAD_RTOL[dtype], f"gradients differ from fp32 by {err:.2e} (normwise)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", _pretrain_names())
def test_pretraining_models(name, dtype):
    model = _tiny(name)
    p = model.patch_size
    imgs = torch.randn(2, 3, 5 * p, 4 * p)

    def loss_fn():
        g = torch.Generator().manual_seed(1)
        return model(imgs, window_size=3, num_windows=2, mask_ratio=0.75, generator=g)[0]

    _compare(model, loss_fn, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pretraining_from_uint8_windows(dtype):
    """The window pipeline's input: uint8 windows normalised inside window_patchify."""
    model = _tiny("lomar_vit_small_patch16")
    windows = torch.randint(0, 256, (2, 3, 3, 48, 48), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(2))
    mask = lomar_ops.sample_window_masks(6, 3, 0.75, generator=torch.Generator().manual_seed(3))
    _compare(model, lambda: model(windows, window_size=3, window_mask=mask)[0], dtype)


def _other_families():
    """(name, kwargs, loss of a model and images): one per family beyond pretraining."""
    def logits(model, imgs):
        return model(imgs).float().logsumexp(-1).mean()

    def features(model, imgs):
        return sum(f.float().square().mean() for f in model(imgs).values())

    def seeded(model, imgs):
        return model(imgs, generator=torch.Generator().manual_seed(4))[0]

    def mae(model, imgs):
        noise = torch.rand(imgs.shape[0], (imgs.shape[-1] // 16) ** 2,
                           generator=torch.Generator().manual_seed(4))
        return model(imgs, noise=noise)[0]

    return [("vit_base_patch16", {}, logits), ("vit_small_patch14", {}, logits),
            ("vitdet_base_patch16", {"window_size": 4}, features),
            ("mae_vit_base_patch16_dec512d8b", {"decoder_depth": 1}, mae),
            ("beit_base_patch16", {"img_size": 128}, seeded),
            ("beit_window_base_patch16", {}, seeded)]


@pytest.mark.parametrize("name,kwargs,loss_of", [pytest.param(*f, id=f[0])
                                                 for f in _other_families()])
def test_other_model_families_bf16(name, kwargs, loss_of):
    torch.manual_seed(0)
    model = create_model(name, depth=2 if name.startswith("vitdet") else 1, **kwargs)
    side = 112 if "patch14" in name else 128
    imgs = torch.randn(2, 3, side, side)
    _compare(model, lambda: loss_of(model, imgs), torch.bfloat16)


def test_masked_patch_loss_promotes_only_under_autocast():
    pred = torch.randn(3, 4, 12).bfloat16().requires_grad_(True)
    target = torch.randn(3, 4, 12)
    mask = torch.rand(3, 4) < 0.7
    mask[0, 0] = True
    with pytest.raises(TypeError, match=r"target must have the dtype of pred \(torch.bfloat16\)"):
        lomar_ops.masked_patch_loss(pred, target, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lomar_ops.masked_patch_loss(pred, target, mask)
    want = lomar_ops.masked_patch_loss(pred.float(), target, mask, backend="torch")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)  # fp32 of the same values
    (grad,) = torch.autograd.grad(loss, pred)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_masked_patch_loss_under_autocast_compiles_fullgraph():
    pred = torch.randn(2, 5, 8).bfloat16()
    target = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(p, t, m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lomar_ops.masked_patch_loss(p, t, m)

    torch.testing.assert_close(step(pred, target, mask),
                               lomar_ops.masked_patch_loss(pred.float(), target, mask))
