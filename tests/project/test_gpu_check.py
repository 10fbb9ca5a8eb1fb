"""The GPU check's pieces that can be tested in a second (the whole dry run,
GPU_CHECK_DRY=1 make gpu-check, is CI's job): stages that fail or run out of time
do not stop the next ones, summarize.py flags figures above the measured ceilings,
and the benchmarks' byte models count only what an op must move."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_or_slow_stage_does_not_stop_the_next(tmp_path, monkeypatch):
    gpu_check = _load("gpu_check")
    monkeypatch.setenv("GPU_CHECK_SLOW_S", "1")
    monkeypatch.setitem(gpu_check.LIMITS, "slow", 1)
    monkeypatch.setitem(gpu_check.LIMITS, "broken", 5)
    monkeypatch.setitem(gpu_check.LIMITS, "fine", 5)
    run = gpu_check.Run(tmp_path)

    def slow(run, deadline):
        rc = gpu_check.run_cmd(run, [sys.executable, "-c", "import time; time.sleep(60)"],
                               "slow", deadline)
        return rc == 0, ""

    def broken(run, deadline):
        raise RuntimeError("boom")

    def fine(run, deadline):
        rc = gpu_check.run_cmd(run, [sys.executable, "-c", "print('hello')"], "fine", deadline)
        return rc == 0, "said hello"

    start = time.monotonic()
    for name, fn in (("slow", slow), ("broken", broken), ("fine", fine)):
        gpu_check.run_stage(run, name, fn, None)
    assert time.monotonic() - start < 20
    assert [r["status"] for r in run.stages] == ["TIMEOUT", "FAILED", "ok"]
    assert "boom" in run.stages[1]["detail"]
    assert (run.tree / "logs" / "fine.log").read_text().strip().endswith("hello")
    table = gpu_check.final_table(run)
    assert table[0].startswith("stage") and any(line.startswith("fine") for line in table)


def test_bench_files_run_the_headline_first_and_the_slowest_last():
    files = _load("gpu_check").bench_files()
    assert files[0] == "bench/bench_window_attention.py"
    assert files[-1] == "bench/bench_vitdet.py"
    assert len(files) == len(list(BENCH.glob("bench_*.py")))


def test_summarize_flags_rows_above_the_ceilings(tmp_path, capsys):
    summarize = _load("summarize")
    (tmp_path / "ceilings.json").write_text(json.dumps(
        {"device_name": "card", "copy_gbps": 1000.0, "bf16_matmul_tflops": 100.0}))
    row = dict(op="op", mode="fwd", dtype="bfloat16", median_ms=1.0)
    (tmp_path / "bench_op.json").write_text(json.dumps([
        {**row, "case": "a", "backend": "honest", "gbps": 900.0, "tflops": 50.0},
        {**row, "case": "a", "backend": "bytes", "gbps": 1400.0},
        {**row, "case": "a", "backend": "flops", "gbps": 10.0, "tflops": 150.0},
    ]))
    lines, suspects = summarize.tables(tmp_path)
    assert len(suspects) == 2
    assert any("140% of the measured copy bandwidth" in s for s in suspects)
    assert any("150% of the measured bf16 matmul rate" in s for s in suspects)
    assert sum("SUSPECT" in line for line in lines if line.startswith("  a")) == 2
    assert summarize.main([str(tmp_path), "--headline"]) == 0
    assert "rows above a measured ceiling (SUSPECT): 2" in capsys.readouterr().out


def test_mask_substitute_counts_only_the_rows_it_reads():
    ms = _load("bench_mask_substitute")
    S, L, D, e = 2, 4, 8, 2
    out = S * (L + 1) * D * e
    # every token masked: no token row is read, only the mask and the two vectors
    assert ms.forward_bytes(S, L, D, S * L, e) == S * L + 2 * D * e + out
    assert ms.forward_bytes(S, L, D, 0, e) - ms.forward_bytes(S, L, D, S * L, e) == S * L * D * e
    assert ms.backward_bytes(S, L, D, e) == out + S * L + S * L * D * e + 2 * D * e


def test_rpe_gather_counts_the_table_entries_the_map_uses():
    rg = _load("bench_rpe_gather")
    ids = torch.tensor([[0, 0, 1], [2, 2, 2], [0, 1, 2]], dtype=torch.int32)
    assert rg.used_entries(ids) == 2 + 1 + 3


def test_window_patchify_counts_overlapping_windows_once():
    wp = _load("bench_window_patchify")
    coords = torch.tensor([[[0, 0], [0, 0], [1, 1]]])  # two identical, one shifted by 1
    assert wp.covered_patches(coords, 4, 2) == 4 + 4 - 1


@pytest.mark.parametrize("name", ["bench_mask_substitute", "bench_masked_patch_loss",
                                  "bench_rpe_gather", "bench_window_patchify"])
def test_every_benchmark_has_a_tiny_size(name, monkeypatch):
    monkeypatch.setenv("LOMAR_BENCH_TINY", "1")
    common = _load("common")
    assert common.TINY
    module = _load(name)
    for shapes in getattr(module, "CASES", {}).values():
        assert len(shapes) == 3, f"{name}: (cuda, cpu, tiny) shapes"
