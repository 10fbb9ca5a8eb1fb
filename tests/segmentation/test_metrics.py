"""SegmentationMetrics against an independent NumPy computation, accumulation over
batches, the DDP all-reduce with two gloo processes, and the refused inputs."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lomar.segmentation import SegmentationMetrics

IGNORE = 255


def numpy_scores(pred: np.ndarray, target: np.ndarray, num_classes: int):
    """IoU, pixel and class accuracy by counting pixels per class with NumPy masks
    (no confusion matrix, no bincount)."""
    counted = target != IGNORE
    p, t = pred[counted], target[counted]
    iou, acc = [], []
    for c in range(num_classes):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        iou.append(inter / union if union else np.nan)
        acc.append(inter / np.sum(t == c) if np.sum(t == c) else np.nan)
    return np.array(iou), float(np.mean(p == t)), np.array(acc)


def random_maps(rng, shape, num_classes, absent=(), ignore_fraction=0.2):
    classes = [c for c in range(num_classes) if c not in absent]
    target = rng.choice(classes, size=shape)
    pred = np.where(rng.random(shape) < 0.6, target, rng.choice(classes, size=shape))
    target[rng.random(shape) < ignore_fraction] = IGNORE
    return pred, target


def assert_same_scores(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, equal_nan=True, err_msg=key)


def test_equals_numpy_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    num_classes = 7
    # class 5 in neither map, class 6 only in predictions (at some counted pixel)
    pred, target = random_maps(rng, (3, 40, 50), num_classes, absent=(5, 6))
    pred[0, 0, :10] = 6
    target[0, 0, :10] = 2
    # a prediction outside the classes where the target is ignored is not counted
    target[1, 1, :5] = IGNORE
    pred[1, 1, :5] = 200
    metrics = SegmentationMetrics(num_classes, ignore_index=IGNORE)
    metrics.update(torch.from_numpy(pred), torch.from_numpy(target))
    got = metrics.compute()
    iou, pixel_acc, class_acc = numpy_scores(pred, target, num_classes)
    assert np.isnan(got["iou"][5]) and not np.isnan(got["iou"][6]) and got["iou"][6] == 0
    np.testing.assert_allclose(got["iou"], iou, atol=1e-6, equal_nan=True)
    assert got["miou"] == pytest.approx(np.nanmean(iou), abs=1e-6)
    assert got["pixel_accuracy"] == pytest.approx(pixel_acc, abs=1e-6)
    assert got["mean_accuracy"] == pytest.approx(np.nanmean(class_acc), abs=1e-6)
    assert metrics.confusion.dtype == torch.int64
    assert int(metrics.confusion.sum()) == int(np.sum(target != IGNORE))


def test_accumulation_is_over_all_pixels_not_a_mean_of_batches():
    rng = np.random.default_rng(1)
    batches = [random_maps(rng, (2, 16 + 8 * i, 24), 5) for i in range(3)]
    batches[0][1][...] = IGNORE  # a batch of only ignored pixels counts nothing
    accumulated = SegmentationMetrics(5)
    per_batch = []
    for pred, target in batches:
        accumulated.update(torch.from_numpy(pred), torch.from_numpy(target))
        one = SegmentationMetrics(5)
        one.update(torch.from_numpy(pred), torch.from_numpy(target))
        per_batch.append(one.compute()["miou"])
    whole = SegmentationMetrics(5)
    whole.update(torch.cat([torch.from_numpy(p).flatten() for p, _ in batches]),
                 torch.cat([torch.from_numpy(t).flatten() for _, t in batches]))
    assert torch.equal(accumulated.confusion, whole.confusion)
    assert_same_scores(accumulated.compute(), whole.compute())
    finite = [m for m in per_batch if not np.isnan(m)]
    assert abs(np.mean(finite) - whole.compute()["miou"]) > 1e-4
    accumulated.reset()
    assert int(accumulated.confusion.sum()) == 0
    assert np.isnan(accumulated.compute()["miou"])


def test_leading_dims_and_dtypes():
    pred = torch.tensor([[[0, 1], [1, 1]]], dtype=torch.uint8)
    target = torch.tensor([[[0, 1], [0, IGNORE]]], dtype=torch.int64)
    metrics = SegmentationMetrics(2)
    metrics.update(pred, target)
    assert metrics.confusion.tolist() == [[1, 1], [0, 1]]
    got = metrics.compute()
    assert got["iou"] == pytest.approx([0.5, 0.5])
    assert got["pixel_accuracy"] == pytest.approx(2 / 3)


def test_bad_inputs_raise():
    metrics = SegmentationMetrics(4)
    with pytest.raises(ValueError, match="pred holds the value 4"):
        metrics.update(torch.tensor([0, 4]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pred holds the value -1"):
        metrics.update(torch.tensor([-1, 0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target holds the value 9"):
        metrics.update(torch.tensor([0, 1]), torch.tensor([9, 1]))
    with pytest.raises(ValueError, match="same shape"):
        metrics.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer label map"):
        metrics.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    assert int(metrics.confusion.sum()) == 0  # nothing was counted by the refused calls
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(0)
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetrics(4, ignore_index=2)
    metrics.all_reduce()  # no process group: nothing happens
    assert int(metrics.confusion.sum()) == 0


SCRIPT = textwrap.dedent("""
    import sys, torch
    from lomar.distributed import setup, cleanup
    from lomar.segmentation import SegmentationMetrics
    info = setup("cpu")
    data = torch.load(sys.argv[1], weights_only=True)
    metrics = SegmentationMetrics(6)
    for pred, target in zip(data["pred"][info.rank::2], data["target"][info.rank::2]):
        metrics.update(pred, target)
    metrics.all_reduce()
    if info.is_main:
        torch.save({"confusion": metrics.confusion, "scores": metrics.compute(),
                    "world": info.world_size}, sys.argv[2])
    cleanup()
""")


def test_all_reduce_over_two_gloo_processes_equals_one_process(tmp_path):
    rng = np.random.default_rng(2)
    maps = [random_maps(rng, (2, 12, 20 + 4 * i), 6, absent=(4,)) for i in range(4)]
    data = {"pred": [torch.from_numpy(p) for p, _ in maps],
            "target": [torch.from_numpy(t) for _, t in maps]}
    torch.save(data, tmp_path / "maps.pt")
    (tmp_path / "reduce.py").write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(tmp_path / "reduce.py"),
                          str(tmp_path / "maps.pt"), str(tmp_path / "out.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    single = SegmentationMetrics(6)
    for pred, target in zip(data["pred"], data["target"]):
        single.update(pred, target)
    assert result["world"] == 2
    assert torch.equal(result["confusion"], single.confusion)
    assert_same_scores(result["scores"], single.compute())
