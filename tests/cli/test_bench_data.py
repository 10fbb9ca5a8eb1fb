"""lomar bench-data measures the pretraining job's own pipelines: the "full" row runs
FullCrops (data.pipeline: full), the "windows" row WindowCrops, and data.json names
the class behind each row."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lomar.benchmark import data_pipeline
from lomar.data import FullCrops, WindowCrops

SIZE = 112  # the smallest input that holds a 7x7-patch window of 16-pixel patches


@pytest.fixture
def jpegs(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(150, 200), (260, 190)]):
        smooth = rng.random((h // 8 + 1, w // 8 + 1, 3)) * 255
        pixels = np.kron(smooth, np.ones((8, 8, 1)))[:h, :w] + rng.normal(0, 10, (h, w, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg",
                                                                   quality=90)
    return folder


def _count_calls(monkeypatch, cls):
    calls = []
    real = cls.__call__

    def counting(self, source):
        calls.append(source)
        return real(self, source)

    monkeypatch.setattr(cls, "__call__", counting)
    return calls


def test_each_row_runs_the_jobs_pipeline(jpegs, monkeypatch):
    full_calls = _count_calls(monkeypatch, FullCrops)
    window_calls = _count_calls(monkeypatch, WindowCrops)
    files = sorted(jpegs.glob("*.jpg"))
    rows = data_pipeline.measure(files, SIZE, passes=2)
    # Two timed passes over the files, then the windows once more for their PSNR.
    assert len(full_calls) == 2 * len(files)
    assert len(window_calls) == 3 * len(files)
    assert rows["full"]["pipeline_class"] == "lomar.data.pipelines.FullCrops"
    assert rows["windows"]["pipeline_class"] == "lomar.data.pipelines.WindowCrops"
    # What the job ships: the normalised float32 crop and the corners; uint8 windows
    # and the corners.
    corners = 4 * 2 * torch.int64.itemsize
    assert rows["full"]["bytes_per_image"] == 3 * SIZE * SIZE * 4 + corners
    assert rows["windows"]["bytes_per_image"] == 4 * 3 * SIZE * SIZE + corners


def test_data_json_names_the_class_of_each_row(jpegs, tmp_path):
    out = tmp_path / "out"
    data_pipeline.run(str(jpegs), [SIZE], str(out), passes=1, log=lambda *_: None)
    records = json.loads((out / "data.json").read_text())
    assert {(r["pipeline"], r["pipeline_class"]) for r in records} == {
        ("full", "lomar.data.pipelines.FullCrops"),
        ("windows", "lomar.data.pipelines.WindowCrops")}


def test_source_times_one_tiled_file_per_sample(tmp_path):
    """lomar bench-data --source FILE: data.json is that file's record, ms_per_sample (the
    median) and tiles_per_sample among its keys, the tiles counted by the reader."""
    from lomar.cli import main
    from tests.tiled_files import pyramid, write_pyramid

    slide = tmp_path / "slide.tif"
    write_pyramid(slide, pyramid(levels=3, size=(768, 640)), tile=64)
    out = tmp_path / "out"
    assert main(["bench-data", "--source", str(slide), "--sizes", "224", "--samples", "6",
                 "--out", str(out)]) == 0
    record = json.loads((out / "data.json").read_text())
    assert record["source"] == str(slide) and record["kind"] == "tiled"
    assert record["size"] == 224 and record["samples"] == 6 and record["region"] == 640
    assert record["ms_per_sample"] > 0 and record["tiles_per_sample"] > 0
    assert 0 <= record["cache_hit_rate"] < 1
    assert record["peak_rss_mb"] >= record["anon_rss_peak_mb"] >= record["anon_rss_start_mb"]


def test_source_times_a_jpeg_and_lists_several(jpegs, tmp_path):
    from lomar.cli import main

    files = sorted(str(p) for p in jpegs.glob("*.jpg"))
    out = tmp_path / "out"
    assert main(["bench-data", "--source", *files, "--sizes", "112", "--samples", "3",
                 "--out", str(out)]) == 0
    records = json.loads((out / "data.json").read_text())
    assert [r["source"] for r in records] == files
    assert all(r["kind"] == "image" and r["tiles_per_sample"] is None for r in records)


@pytest.mark.parametrize("argv, message", [
    (["--source", "missing.tif"], "--source: no such file: missing.tif"),
    (["--source", "x", "--samples", "0"], "--samples must be >= 1 and --tile-cache-mb >= 0, got 0"),
    (["--source", "x", "--sizes", "100"], "got [100]"),
])
def test_source_refuses_bad_arguments(argv, message, capsys, tmp_path):
    from lomar.cli import main

    assert main(["bench-data", *argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "data.json").exists()


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent's pid
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_stopped_bench_leaves_no_measuring_process(jpegs, tmp_path, signal_name):
    """Stopping lomar bench-data (SIGTERM, or SIGKILL) ends its spawned measuring process
    too: nothing is left loading the machine."""
    import os
    import signal
    import subprocess
    import sys
    import time

    bench = subprocess.Popen([sys.executable, "-m", "lomar", "bench-data", "--source",
                              str(jpegs / "0.jpg"), "--samples", "1000000", "--out",
                              str(tmp_path / "out")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _children(bench.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        children = _children(bench.pid)
        assert children, "the measuring process did not start"
        time.sleep(1.0)  # past the child's start-up (its death signal set)
        bench.send_signal(getattr(signal, signal_name))
        bench.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(os.path.exists(f"/proc/{c}") and
                  open(f"/proc/{c}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
                  for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [c for c in children if os.path.exists(f"/proc/{c}") and
                 open(f"/proc/{c}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        assert not alive, f"measuring process(es) {alive} outlived the benchmark"
    finally:
        if bench.poll() is None:
            bench.kill()
