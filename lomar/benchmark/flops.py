"""FLOPs per image counted from the models themselves, and model FLOPs utilisation.

torch.utils.flop_counter.FlopCounterMode counts matrix products and convolutions
(2 FLOPs per multiply-add), forward and backward as they run. lomar_ops' custom ops
are opaque to it, so the count runs the model with ``ops_backend="torch"``: the
reference ops compute the same products as the fused ones (attention's q.k and
p.v, iRPE's q.R), in plain torch ops the counter sees. Elementwise work (softmax,
LayerNorm, the loss) is not counted, as in the hand counts of
docs/method.md#why-the-cost-does-not-grow-with-the-image."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device name, from the
# vendors' datasheets; the first matching key wins, so the specific ones come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
)


def count_flops(model, imgs: torch.Tensor, step_kwargs: dict, backward: bool = True) -> dict:
    """FLOPs per image of one forward (and backward) of ``model`` on ``imgs``:
    {"forward": ..., "train": forward + backward, "tokenizer": the part spent in a
    ``tokenizer`` submodule (BEiT's dVAE, forward only)}. The model runs on the
    reference ops for the count and is left as it was."""
    saved = getattr(model, "ops_backend", None)
    model.ops_backend = "torch"
    batch = imgs.shape[0]
    try:
        with FlopCounterMode(display=False) as counter:
            loss = model(imgs, **step_kwargs)[0]
            forward = counter.get_total_flops()
            per_module = counter.get_flop_counts()
            if backward:
                loss.backward()
        total = counter.get_total_flops()
    finally:
        model.ops_backend = saved
        model.zero_grad(set_to_none=True)
    tokenizer = sum(sum(ops.values()) for name, ops in per_module.items()
                    if name.endswith(".tokenizer"))
    result = {"forward": forward / batch, "tokenizer": tokenizer / batch}
    result["train"] = total / batch if backward else None
    return result


def peak_tflops(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak for ``device_name``, None if not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def measured_tflops(ceilings_json: str | Path | None) -> float | None:
    """bf16 matmul TFLOP/s measured by bench/ceilings.py, when its JSON is given."""
    if not ceilings_json:
        return None
    path = Path(ceilings_json)
    if not path.is_file():
        raise ValueError(f"--ceilings: no such file {str(path)!r} (bench/ceilings.py writes it)")
    return float(json.loads(path.read_text())["bf16_matmul_tflops"])


def mfu(train_flops_per_image: float | None, images_per_s: float,
        peak: float | None) -> float | None:
    """Model FLOPs utilisation: counted training FLOPs per second over the peak."""
    if not train_flops_per_image or not peak:
        return None
    return train_flops_per_image * images_per_s / (peak * 1e12)
