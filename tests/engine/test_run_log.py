"""lomar.run_log: JSONL + TensorBoard records and the loss-curve PNG."""

import pytest

from lomar.run_log import RunLog, plot_loss_curve, read_log


def test_log_writes_jsonl_and_tensorboard(tmp_path):
    log = RunLog(tmp_path)
    for step in range(5):
        log.log(step, loss=1.0 / (step + 1), lr=1e-3)
    log.close()
    records = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in records] == list(range(5))
    assert records[2]["loss"] == pytest.approx(1 / 3) and records[0]["lr"] == 1e-3
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_disabled_log_writes_nothing(tmp_path):
    log = RunLog(tmp_path / "rank1", enabled=False)
    log.log(0, loss=1.0)
    log.close()
    assert not (tmp_path / "rank1").exists()


def test_loss_curve_png(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    for step in range(40):
        log.log(step, loss=2.0 - step / 40)
    log.close()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 40, "lo')  # a torn line, as a kill leaves
    png = plot_loss_curve(tmp_path / "log.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no finite 'acc' values"):
        plot_loss_curve(tmp_path / "log.jsonl", tmp_path / "acc.png", key="acc")
