"""hubconf.py through torch.hub.load(source="local"): every LoMaR model name is an
entry point; checkpoints written by the jobs (checkpoint-last.pt, model.safetensors
with its config.yaml; pretraining, fine-tuning, linear probe) and the authors'
(converted) load with the architecture they were written for."""

from pathlib import Path

import pytest
import torch

from lomar.checkpoint import convert_official, load_checkpoint
from lomar.config import load_config
from lomar.data import build_demo_photos
from lomar.engine import FinetuneConfig, PretrainConfig, finetune, pretrain
from lomar.hub import hub_model_names
from image_folders import write_folder

ROOT = Path(__file__).resolve().parents[2]
TINY = "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}"
COMMON = [TINY, "data.num_workers=0", "batch_size=4", "max_steps=1", "progress=false",
          "device=cpu", "optim.lr=0.001"]


def hub_load(name, **kwargs):
    return torch.hub.load(str(ROOT), name, source="local", **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One optimizer step of each job on a tiny model: their output folders."""
    tmp = tmp_path_factory.mktemp("runs")
    photos = build_demo_photos(tmp / "photos", num_images=8, size=64, seed=0)
    pretrain(load_config(PretrainConfig, None, COMMON + [
        "model=lomar_vit_small_patch16", "data.input_size=64", "mask.window_size=3",
        "mask.num_windows=2", "norm_pix_loss=false", "mask.window_sampling=batch",
        "data.pipeline=full",
        f"data.path={photos}", f"output_dir={tmp / 'pretrain'}"]))
    write_folder(tmp / "imgs" / "train", 4, seed=0)
    write_folder(tmp / "imgs" / "val", 2, seed=1)
    tuned = {}
    for kind, extra in (("finetune", []), ("probe", ["linear_probe=true"])):
        finetune(load_config(FinetuneConfig, None, COMMON + extra + [
            "model=vit_small_patch16", "data.input_size=32", f"data.path={tmp / 'imgs'}",
            f"checkpoint={tmp / 'pretrain' / 'checkpoint-last.pt'}",
            f"output_dir={tmp / kind}"]))
        tuned[kind] = tmp / kind
    return {"pretrain": tmp / "pretrain", **tuned}


def assert_weights(model, state):
    own = model.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], state[k]) for k in own)


def test_every_lomar_model_is_an_entry_point():
    import hubconf

    names = hub_model_names()
    assert {"lomar_vit_base_patch16", "lomar_vit_base_patch16_dec512d8b",
            "vit_base_patch16", "vit_huge_patch14"} <= set(names)
    assert all(callable(getattr(hubconf, n)) for n in names)
    model = hub_load("lomar_vit_small_patch16", depth=1)  # random init, kwargs passed on
    assert type(model).__name__ == "LoMaRPretrain" and len(model.blocks) == 1


@pytest.mark.parametrize("file", ["checkpoint-last.pt", "model.safetensors"])
def test_pretraining_checkpoints_load_with_their_architecture(runs, file):
    state = load_checkpoint(runs["pretrain"] / "checkpoint-last.pt")["model"]
    model = hub_load("lomar_vit_small_patch16", checkpoint=str(runs["pretrain"] / file))
    assert_weights(model, state)  # depth 2, width 32 from the run's config
    assert model.norm_pix_loss is False and model.window_sampling == "batch"
    imgs = torch.randn(2, 3, 64, 64)
    g = lambda: torch.Generator().manual_seed(0)
    loss, pred, mask = model(imgs, 3, 2, 0.8, generator=g())
    assert pred.shape == (2, 2, 9, 16 * 16 * 3) and torch.isfinite(loss)


def test_pretraining_checkpoint_into_an_encoder(runs):
    state = load_checkpoint(runs["pretrain"] / "checkpoint-last.pt")["model"]
    model = hub_load("vit_small_patch16", checkpoint=str(runs["pretrain"] / "checkpoint-last.pt"),
                     num_classes=7)
    own = model.state_dict()
    encoder = [k for k in own if not k.startswith(("head.", "fc_norm."))]
    assert encoder and all(torch.equal(own[k], state[k]) for k in encoder)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("kind", ["finetune", "probe"])
@pytest.mark.parametrize("file", ["checkpoint-last.pt", "model.safetensors"])
def test_fine_tuning_checkpoints_load_whole(runs, kind, file):
    state = load_checkpoint(runs[kind] / "checkpoint-last.pt")["model"]
    model = hub_load("vit_small_patch16", checkpoint=str(runs[kind] / file))
    assert_weights(model, state)  # 3 classes; the probe's BatchNorm + Linear head
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_the_authors_checkpoint_is_converted(tmp_path):
    from test_models import _official_state_dict, tiny

    ours = tiny(patch_size=16)
    path = tmp_path / "lomar_official.pth"
    torch.save({"model": _official_state_dict(ours), "epoch": 3}, path)
    kwargs = {"depth": 2, "embed_dim": 32, "num_heads": 4}
    model = hub_load("lomar_vit_small_patch16", checkpoint=str(path), **kwargs)
    assert_weights(model, convert_official(torch.load(path)))
    encoder = hub_load("vit_small_patch16", checkpoint=str(path), num_classes=5, **kwargs)
    assert torch.equal(encoder.blocks[1].attn.rpe_table, ours.blocks[1].attn.rpe_table)


def test_misfit_and_unknown_are_refused(runs):
    with pytest.raises(ValueError, match=r"written for lomar_vit_small_patch16\) does not fit "
                                         r"lomar_vit_small_patch16.*other shapes"):
        hub_load("lomar_vit_small_patch16", checkpoint=str(runs["pretrain"] / "model.safetensors"),
                 embed_dim=64, num_heads=2)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        hub_load("vit_small_patch16", checkpoint=str(runs["pretrain"] / "nope.pt"))
    from lomar.hub import load_model

    with pytest.raises(ValueError, match="unknown model 'mae_vit_base_patch16_dec512d8b'"):
        load_model("mae_vit_base_patch16_dec512d8b")
