"""lomar.distributed under torchrun on CPU (gloo, loopback): two processes with
half the batch each give the gradients of one process with the whole batch."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lomar.distributed import DistInfo, all_finite, mean_across, setup

SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from lomar.distributed import setup, cleanup, mean_across, all_finite
    info = setup("cpu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    half = x[info.rank * 4:(info.rank + 1) * 4]
    ddp = DDP(model)
    loss = ddp(half).square().mean()
    loss.backward()
    mean_loss = mean_across(loss, info)
    finite = all_finite(torch.tensor(float("nan")) if info.rank == 1 else loss, info)
    if info.is_main:
        torch.save({"grads": [p.grad for p in model.parameters()], "loss": mean_loss,
                    "finite": finite, "world": info.world_size}, sys.argv[1])
    cleanup()
""")


def test_two_process_gradients_equal_single_process(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(script), str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = torch.load(out, weights_only=True)
    assert result["world"] == 2 and result["finite"] is False  # rank 1's NaN reached rank 0

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    losses = [model(x[:4]).square().mean(), model(x[4:]).square().mean()]
    (sum(losses) / 2).backward()
    for got, p in zip(result["grads"], model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-6, atol=1e-7)
    assert result["loss"] == pytest.approx(float(sum(losses).detach() / 2), rel=1e-6)


def test_single_process_defaults(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = setup("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled
    assert mean_across(torch.tensor(2.5), info) == 2.5
    assert all_finite(torch.tensor([1.0, 2.0]), info)
    assert not all_finite(torch.tensor([1.0, float("inf")]), info)
    with pytest.raises(ValueError, match="device must be 'auto', 'cuda' or 'cpu'"):
        setup("tpu")
