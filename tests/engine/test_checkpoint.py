"""lomar.checkpoint: atomic writes that survive a kill, safe loading, RNG states."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from lomar.checkpoint import (export_safetensors, load_checkpoint, rng_state, save_checkpoint,
                              set_rng_state)


def _training_state():
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 5)).square().mean().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 11,
            "epoch": 2.5, "config": {"lr": 1e-3, "name": "tiny"}, "rng": rng_state()}


def test_round_trip(tmp_path):
    state = _training_state()
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 11 and loaded["config"] == {"lr": 1e-3, "name": "tiny"}
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], exp_avg)
    assert [p.name for p in tmp_path.joinpath("ckpt").iterdir()] == ["last.pt"]


def test_rng_state_restores_every_generator():
    state = rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[0] == again[0] and draws[1] == again[1] and torch.equal(draws[2], again[2])


def test_rng_state_survives_a_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    want = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert want[:2] == got[:2] and torch.equal(want[2], got[2])


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(RuntimeError, match=f"checkpoint {path} could not be read safely"):
        load_checkpoint(path)


def test_missing_and_torn_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    good = save_checkpoint(tmp_path / "good.pt", _training_state())
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RuntimeError, match="could not be read safely"):
        load_checkpoint(torn)


WRITER = textwrap.dedent("""
    import sys, torch
    from lomar.checkpoint import save_checkpoint
    path = sys.argv[1]
    i = 1
    while True:  # 16 MB a write: long enough to be interrupted mid-way
        save_checkpoint(path, {"step": i, "weights": torch.full((4_000_000,), float(i))})
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.9])
def test_kill_during_write_leaves_a_loadable_checkpoint(tmp_path, delay):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 0, "weights": torch.full((4_000_000,), 0.0)})
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    time.sleep(1.0 + delay)  # torch import, then some writes, killed mid-way through one
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)  # the last complete write, whole
    assert torch.equal(state["weights"], torch.full((4_000_000,), float(state["step"])))
    save_checkpoint(path, {"step": -1})  # the next save clears what the kill left behind
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_export_safetensors(tmp_path):
    from safetensors.torch import load_file

    sd = torch.nn.Linear(4, 3).state_dict()
    path = export_safetensors(sd, tmp_path / "w.safetensors")
    loaded = load_file(path)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    with pytest.raises(ValueError, match=r"non-tensors at \['step'\]"):
        export_safetensors({**sd, "step": 3}, tmp_path / "x.safetensors")
