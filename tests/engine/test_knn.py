"""The kNN monitor of pretraining (lomar/engine/knn.py): DINO's weighted kNN against a
loop written here, the pretraining model's whole-image features against the
fine-tuning encoder's, the features of two processes against one's, and the monitor in
a tiny pretraining run: logged at its steps, the losses those of a run without it,
resumed exactly, bad values refused before work."""

import os

import numpy as np
import pytest
import torch

from lomar.config import ConfigError, load_config
from lomar.data import build_demo_digits, build_demo_photos
from lomar.distributed import DistInfo
from lomar.engine import PretrainConfig, pretrain
from lomar.engine.init_weights import load_encoder_state
from lomar.engine.knn import extract_features, knn_accuracy, knn_scores, subset_indices
from lomar.models import create_model
from lomar.models.lomar_vit import LoMaRViT
from lomar.run_log import read_log

TINY = dict(depth=2, embed_dim=32, num_heads=2)


def numpy_knn(train, train_labels, val, num_classes, k, T):
    """DINO's weighted vote, one val item at a time."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    scores = np.zeros((len(val), num_classes))
    for i, v in enumerate(val):
        sim = train @ (v / np.linalg.norm(v))
        for j in np.argsort(-sim)[:k]:
            scores[i, train_labels[j]] += np.exp(sim[j] / T)
    return scores


def test_weighted_knn_equals_a_loop_over_the_val_items():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(60, 8, generator=g, dtype=torch.float64)
    val = torch.randn(17, 8, generator=g, dtype=torch.float64)
    train_labels = torch.arange(60)[torch.randperm(60, generator=g)] % 6  # 10 per class
    val_labels = torch.randint(0, 6, (17,), generator=g)
    k, T = 40, 0.1
    expected = numpy_knn(train.numpy(), train_labels.numpy(), val.numpy(), 6, k, T)
    # Ties-free: every class has votes, no two the same (top-5 among equal scores,
    # e.g. classes without votes, is arbitrary).
    assert all(len(set(row)) == 6 and row.min() > 0 for row in expected)
    got = knn_scores(train, train_labels, val, 6, k, T, chunk=5)  # chunks of 5 queries
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    acc = knn_accuracy(train, train_labels, val, val_labels, 6, k, T)
    order = np.argsort(-expected, axis=1)
    top1 = (order[:, 0] == val_labels.numpy()).mean() * 100
    top5 = (order[:, :5] == val_labels.numpy()[:, None]).any(axis=1).mean() * 100
    assert acc == pytest.approx({"knn_top1": top1, "knn_top5": top5})
    assert 0 < acc["knn_top1"] < 100  # random features: neither trivial extreme


def test_separable_features_give_top1_100():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(5, 16, generator=g) * 10
    train_labels, val_labels = torch.arange(100) % 5, torch.arange(30) % 5
    train = centres[train_labels] + torch.randn(100, 16, generator=g)
    val = centres[val_labels] + torch.randn(30, 16, generator=g)
    acc = knn_accuracy(train, train_labels, val, val_labels, 5)  # k 20, T 0.07
    assert acc == {"knn_top1": 100.0, "knn_top5": 100.0}
    shuffled = knn_accuracy(train, train_labels[torch.randperm(100, generator=g)], val,
                            val_labels, 5)
    assert shuffled["knn_top1"] < 60  # the labels, not the arithmetic, made it 100


def test_subset_keeps_every_class():
    assert subset_indices(10, 0).tolist() == list(range(10))
    assert subset_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert subset_indices(3, 5).tolist() == [0, 1, 2]


@pytest.mark.parametrize("abs_pos_embed", [False, True])
def test_pretraining_features_are_the_encoders(abs_pos_embed):
    """forward_features of the pretraining model: the fine-tuning encoder loaded from
    its weights (its own patchify of float images) gives the same tokens before the
    pooling; uint8 images give what their normalised float version gives."""
    if abs_pos_embed:
        model = create_model("lomar_vit_small_patch16", abs_pos_embed=True, **TINY).eval()
        images = torch.randint(0, 256, (2, 3, 48, 32), dtype=torch.uint8)
        a = model.forward_features(images)
        b = model.forward_features(images[..., :16])  # other grid: other position codes
        assert a.shape == (2, 32) and not torch.allclose(a, b)
        return
    model = create_model("lomar_vit_small_patch16", **TINY).eval()
    images = torch.randint(0, 256, (3, 3, 48, 32), dtype=torch.uint8)  # 3 x 2 patches
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    floats = (images.float() / 255 - mean) / std
    features = model.forward_features(images)
    torch.testing.assert_close(model.forward_features(floats), features, rtol=1e-5, atol=1e-5)
    encoder = LoMaRViT(global_pool=False, num_classes=0, **TINY).eval()
    report = load_encoder_state(encoder, model.state_dict(), "lomar", "memory")
    assert "norm.weight" in report.loaded and not report.missing
    tokens = []
    encoder.norm.register_forward_hook(lambda mod, inp, out: tokens.append(out))
    encoder.forward_features(floats)
    torch.testing.assert_close(tokens[0][:, 1:].mean(dim=1), features, rtol=1e-5, atol=1e-5)


class Images(torch.utils.data.Dataset):
    def __init__(self, n):
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(3))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 3


def test_extract_features_in_order_and_without_global_draws():
    model = create_model("lomar_vit_small_patch16", **TINY)
    data, idx = Images(9), torch.tensor([8, 1, 4, 5, 0])
    state = torch.get_rng_state()
    feats = extract_features(model, data, idx, batch_size=2, info=DistInfo())
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from the global stream
    assert model.training  # its mode restored
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(feats, model.forward_features(data.images[idx]), rtol=1e-5,
                                   atol=1e-5)


def _two_process_features(rank, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = create_model("lomar_vit_small_patch16", **TINY)
    feats = extract_features(model, Images(9), torch.tensor([8, 1, 4, 5, 0, 2, 7]), 2,
                             DistInfo(rank=rank, world_size=2))
    torch.save(feats, f"{path}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_gather_the_features_of_one(tmp_path):
    """Each process extracts every second image (7: one more on rank 0); both get all
    of them, in order, as one process computes them."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_two_process_features, args=(port, str(tmp_path / "f")),
                                nprocs=2)
    torch.manual_seed(0)
    model = create_model("lomar_vit_small_patch16", **TINY)
    one = extract_features(model, Images(9), torch.tensor([8, 1, 4, 5, 0, 2, 7]), 2, DistInfo())
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"f.{rank}"), one, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return build_demo_photos(tmp_path_factory.mktemp("photos"), num_images=24, size=64, seed=0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return build_demo_digits(tmp_path_factory.mktemp("digits"), size=64, seed=0)


def config(photos, out, **over):
    run = ["model=lomar_vit_small_patch16", "model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
           "data.input_size=64", "data.num_workers=0", "mask.window_size=3",
           "mask.num_windows=2", "batch_size=4", "log_every=1", "optim.lr=0.001",
           "optim.warmup_epochs=0.5", "progress=false", "device=cpu", "save_every=100",
           f"data.path={photos}", f"output_dir={out}"]
    return load_config(PretrainConfig, None, run + [f"{k}={v}" for k, v in over.items()])


def test_the_monitor_logs_at_its_steps_and_changes_no_loss(photos, digits, tmp_path):
    """24 photos / batch 4: 6 steps an epoch; knn_every 0.5 epoch: steps 3 and 6, and 7
    (the end). The losses are those of the run without the monitor, bit for bit; a run
    stopped at step 4 and resumed gives the same losses and kNN accuracy."""
    knn = {"eval.knn_every": 0.5, "eval.knn_max_images": 40, "eval.knn_k": 5}
    off = pretrain(config(photos, tmp_path / "off", max_steps=7))
    on = pretrain(config(photos, tmp_path / "on", max_steps=7, **{"eval.knn_data": "digits"},
                         **knn))
    log_on, log_off = (read_log(tmp_path / run / "log.jsonl") for run in ("on", "off"))
    evals = [r for r in log_on if "knn_top1" in r]
    assert [r["step"] for r in evals] == [3, 6, 7]
    for r in evals:
        assert 0 <= r["knn_top1"] <= r["knn_top5"] <= 100 and r["knn_seconds"] > 0
    assert [r["loss"] for r in log_on if "loss" in r] == [r["loss"] for r in log_off]
    assert on["loss"] == off["loss"] and on["knn_top1"] == evals[-1]["knn_top1"]
    assert (tmp_path / "on" / "demo_digits" / "val").is_dir()  # "digits": built there

    split = tmp_path / "split"
    over = {"eval.knn_data": str(digits), **knn}
    pretrain(config(photos, split, max_steps=4, **over))
    pretrain(config(photos, split, max_steps=7, resume=str(split / "checkpoint-last.pt"), **over))
    log_split = read_log(split / "log.jsonl")
    assert [r["step"] for r in log_split if "knn_top1" in r] == [3, 4, 6, 7]
    assert [r["loss"] for r in log_split if "loss" in r] == [r["loss"] for r in log_off]
    assert [r["knn_top1"] for r in log_split if r["step"] in (6, 7) and "knn_top1" in r] == \
        [r["knn_top1"] for r in evals[1:]]


@pytest.mark.parametrize("override, match", [
    ({"eval.knn_every": 1}, "eval.knn_every > 0 needs eval.knn_data"),
    ({"eval.knn_every": -1}, "eval.knn_every must be >= 0"),
    ({"eval.knn_k": 0}, "eval.knn_k must be >= 1, got 0"),
    ({"eval.knn_temperature": 0}, "eval.knn_temperature must be > 0, got 0.0"),
    ({"eval.knn_batch_size": 0}, "eval.knn_batch_size must be >= 1"),
    ({"eval.knn_max_images": -1}, "eval.knn_max_images must be >= 0"),
    ({"eval.knn_every": 1, "eval.knn_data": "digits", "data.bands": "all"},
     "eval.knn_every > 0 reads its images as RGB"),
])
def test_bad_values_are_refused(photos, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        config(photos, tmp_path, **override)


def test_a_folder_without_splits_is_refused_before_the_model(photos, tmp_path):
    cfg = config(photos, tmp_path / "run", **{"eval.knn_every": 1, "eval.knn_data": str(photos)})
    with pytest.raises(ConfigError, match="eval.knn_data .*train not found"):
        pretrain(cfg)
    assert not (tmp_path / "run" / "log.jsonl").exists()
