"""`lomar bench`: FLOPs counted from the models against the hand counts of
docs/method.md#why-the-cost-does-not-grow-with-the-image, the ratio table, bad arguments, and the CPU run end to end (JSON and PNG)."""

import json

import pytest
import torch

from lomar.models.baselines.beit import BEiTPretrain
from lomar.benchmark.flops import count_flops, mfu, peak_tflops
from lomar.benchmark.report import ratio_rows, speed_targets
from lomar.cli import main
from lomar.models import create_model

GMAC = 2e9  # FlopCounterMode counts 2 FLOPs per multiply-add


@pytest.mark.parametrize("res, hand", [(224, 9.8), (384, 30.6), (448, 43.1)])
def test_mae_flops_match_the_hand_count(res, hand):
    with torch.device("meta"):  # no weights: the count needs shapes only
        model = create_model("mae_vit_base_patch16_dec512d8b")
    imgs = torch.empty(1, 3, res, res, device="meta")
    counted = count_flops(model, imgs, {"mask_ratio": 0.75}, backward=False)
    assert abs(counted["forward"] / GMAC - hand) / hand < 0.005  # within 0.5%
    assert counted["tokenizer"] == 0


@pytest.mark.slow
def test_lomar_and_beit_flops_match_the_hand_count():
    torch.manual_seed(0)
    lomar = create_model("lomar_vit_base_patch16")
    with torch.no_grad():
        at_224 = count_flops(lomar, torch.randn(1, 3, 224, 224), {"num_windows": 4},
                             backward=False)["forward"]
        at_448 = count_flops(lomar, torch.randn(1, 3, 448, 448), {"num_windows": 4},
                             backward=False)["forward"]
    assert abs(at_224 / GMAC - 17.5) / 17.5 < 0.01
    # Ours embeds only the window patches, so the count does not change with the image;
    # the hand count at 448 (17.8) embeds the whole image as the authors' code does.
    assert at_448 == at_224
    whole_image_extra = (28 * 28 - 4 * 49) * 768 * (3 * 16 * 16) / 1e9  # GMAC
    assert abs(at_448 / GMAC + whole_image_extra - 17.8) < 0.06

    beit = BEiTPretrain(img_size=224)
    mask = torch.zeros(1, 196, dtype=torch.bool)
    mask[0, :75] = True  # the hand count's 75 masked patches
    with torch.no_grad():
        counted = count_flops(beit, torch.randn(1, 3, 224, 224), {"bool_masked_pos": mask},
                              backward=False)
    assert abs(counted["tokenizer"] / GMAC - 26.1) < 0.1
    encoder = (counted["forward"] - counted["tokenizer"]) / GMAC
    assert abs(encoder - 18.0) / 18.0 < 0.01


def test_backward_is_counted_and_mfu():
    model = create_model("mae_vit_base_patch16_dec512d8b", depth=1, decoder_depth=1)
    counted = count_flops(model, torch.randn(2, 3, 64, 64), {"mask_ratio": 0.75})
    assert 2.5 < counted["train"] / counted["forward"] < 3.5  # backward ~ 2x forward
    assert model.ops_backend is None and all(p.grad is None for p in model.parameters())
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("cpu") is None
    assert mfu(1e12, 100.0, 1000.0) == pytest.approx(0.1)


def test_ratio_rows():
    def case(method, res, ips, train):
        return {"method": method, "resolution": res, "images_per_s": ips, "status": "ok",
                "flops_per_image": {"train": train}}
    results = {"cases": [case("lomar_paper_windows", 448, 30.0, 1.0), case("mae", 448, 10.0, 2.5),
                         case("beit", 448, 5.0, 6.0), {"method": "lomar", "resolution": 448,
                                                       "status": "out of memory at batch 8"}]}
    rows = {(r["numerator"], r["denominator"]): r for r in ratio_rows(results)}
    assert set(rows) == {("lomar_paper_windows", "mae"), ("lomar_paper_windows", "beit")}
    mae = rows["lomar_paper_windows", "mae"]
    assert mae["throughput_ratio"] == pytest.approx(3.0) and mae["compute_ratio"] == 2.5
    assert mae["paper"] == 3.1 and rows["lomar_paper_windows", "beit"]["paper"] == 5.3


def test_speed_targets():
    def case(method, res, ips):
        return {"method": method, "resolution": res, "images_per_s": ips, "status": "ok",
                "ms_per_image": 1e3 / ips}
    results = {"cases": [case("lomar", 224, 100.0), case("lomar", 1024, 95.0),
                         case("lomar", 448, 98.0), case("mae", 448, 40.0), case("beit", 448, 20.0),
                         case("lomar_reference", 224, 70.0), case("lomar_reference", 448, 80.0)]}
    got = {t["target"]: (t["measured"], t["met"]) for t in speed_targets(results)}
    flat = "LoMaR, 4 windows: time per image flat within 10%, 224-1024"
    assert got[flat] == ("max/min 1.05", True)
    assert got["448: LoMaR (4 windows) >= 2.4x mae images/s"] == ("2.45x", True)
    assert got["448: LoMaR (4 windows) >= 5.0x beit images/s"] == ("4.90x", False)
    fused = "fused ops >= 1.3x reference ops, every resolution"
    assert got[fused] == ("lowest 1.23x (at 448)", False)


def test_batch_search(monkeypatch):
    from lomar.benchmark import timing

    for limit, start, cap, want in ((20, 8, 256, 16), (5, 8, 256, 4), (0, 8, 256, 0),
                                    (1000, 8, 64, 64), (1000, 8, 4, 4)):
        tried = []

        def fits(model, make_inputs, batch, device, amp=True, limit=limit):
            tried.append(batch)
            return batch <= limit
        monkeypatch.setattr(timing, "fits", fits)
        assert timing.search_batch(None, None, torch.device("cpu"), start, cap) == want
        assert max(tried) <= cap


def test_bad_arguments(capsys):
    assert main(["bench", "--device", "cpu", "--resolutions", "100"]) == 2
    assert "resolution must be a multiple of 16 and at least 112" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--methods", "simmim"]) == 2
    assert "unknown method 'simmim'" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--batch", "0"]) == 2
    assert "--batch must be >= 1, got 0" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--ops-backend", "cuda"]) == 2
    assert "--ops-backend cuda: window_patchify: backend='cuda' is unavailable" \
        in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda"]) == 2
        assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err


def test_bench_end_to_end_on_cpu(tmp_path, capsys):
    out = tmp_path / "throughput"
    argv = ["bench", "--device", "cpu", "--size", "tiny", "--resolutions", "112",
            "--methods", "lomar", "mae", "beit_window", "--batch", "2", "--warmup", "0",
            "--iters", "1", "--phase-iters", "1", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "lomar " + " ".join(argv)
    assert results["device_type"] == "cpu" and results["versions"]["torch"] == torch.__version__
    assert [c["method"] for c in results["cases"]] == ["lomar", "mae", "beit_window"]
    for c in results["cases"]:
        assert c["status"] == "ok" and c["batch"] == 2 and c["images_per_s"] > 0
        assert c["flops_per_image"]["train"] > c["flops_per_image"]["forward"] > 0
        assert c["phases_ms"]["encoder_forward_ms"] > 0 and c["mfu"] is None
    lomar = results["cases"][0]
    assert lomar["windows"] == 4 and lomar["ops_backends"]["window_attention"] == "cpu"
    assert "tokenizer_ms" in results["cases"][2]["phases_ms"]
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "ratios.md").read_text()
    assert "| lomar / mae | 112 |" in table and "| beit_window | 112 | 4 | 2 |" in table
    assert "lomar / mae" in capsys.readouterr().out


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_bench_under_autocast_on_cpu(tmp_path, amp):
    """--amp: the steps the GPU runs (autocast; fp16 with loss scaling), on the CPU."""
    out = tmp_path / amp
    argv = ["bench", "--device", "cpu", "--size", "tiny", "--resolutions", "112", "--methods",
            "lomar", "mae", "--batch", "2", "--warmup", "1", "--iters", "1", "--phase-iters", "1",
            "--threads", "1", "--amp", amp, "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[amp] + " autocast"
    assert [c["status"] for c in results["cases"]] == ["ok", "ok"]


def test_bench_fed_by_the_window_pipeline(tmp_path):
    """--data-workers: LoMaR steps fed by the loader report their wait for data."""
    out = tmp_path / "fed"
    argv = ["bench", "--device", "cpu", "--size", "tiny", "--resolutions", "112", "--methods",
            "lomar", "mae", "--batch", "2", "--warmup", "1", "--iters", "2", "--phase-iters", "0",
            "--threads", "1", "--data-workers", "1", "--out", str(out)]
    assert main(argv) == 0
    cases = {c["method"]: c for c in json.loads((out / "results.json").read_text())["cases"]}
    lomar = cases["lomar"]
    assert 0 <= lomar["data_wait_share"] <= 1 and lomar["fed_images_per_s"] > 0
    assert lomar["data_workers"] == 1 and any((out / "sources" / "imagenet").glob("*.jpg"))
    assert "data_wait_share" not in cases["mae"]  # MAE takes whole images
    assert "waiting for data" in (out / "ratios.md").read_text()
