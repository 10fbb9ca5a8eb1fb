"""``lomar bench``: training-step throughput of LoMaR (fused and reference ops), MAE,
BEiT and BEiT on windows at several resolutions, with FLOPs counted from the
models, model FLOPs utilisation on GPU, a plot, a ratio table and the speed targets
(docs/benchmarks.md).

    lomar bench --device cuda --out DIR          # ViT-B/16, 224 to 1024, batch search
    lomar bench --device cpu --quick --out DIR   # reduced ViT, a few minutes on 2 cores

Kept import-light: the CLI builds its parser from here without importing torch."""

from __future__ import annotations

import argparse

QUICK = {"size": "quick", "resolutions": (224, 448, 768), "warmup": 1, "iters": 3,
         "phase_iters": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true",
                        help="reduced ViT (size 'quick'), resolutions 224/448/768, few iterations")
    parser.add_argument("--out", default="bench/results/throughput",
                        help="folder for results.json, throughput.png, ratios.md")
    parser.add_argument("--batch", type=int, default=None,
                        help="fixed batch for every method (default: search on CUDA, 2 on CPU)")
    parser.add_argument("--max-batch", type=int, default=256, help="cap of the batch search")
    parser.add_argument("--methods", nargs="+", default=None, help="subset of the methods")
    parser.add_argument("--resolutions", nargs="+", type=int, default=None,
                        help="default 224 384 448 512 768 1024 (quick: 224 448 768)")
    parser.add_argument("--size", default=None, help="base (ViT-B, default), quick or tiny")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 10)")
    parser.add_argument("--phase-iters", type=int, default=None,
                        help="synchronised steps for the per-phase split (default 2; 0: none)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip the cases left once this many seconds are spent")
    parser.add_argument("--ops-backend", default=None,
                        help="run every method's lomar_ops on this backend (e.g. torch, the "
                             "references); default: each method's own")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--data-workers", type=int, default=None,
                        help="also feed the LoMaR steps from the window pipeline with this many "
                             "loader processes and report the share of the step spent waiting "
                             "for data (default 0: synthetic images only)")
    parser.add_argument("--data-images", default=None,
                        help="JPEG folder for --data-workers (default: offline ImageNet-sized "
                             "JPEGs made from the photos inside scikit-image)")
    parser.add_argument("--ceilings", default=None,
                        help="bench/ceilings.py's JSON: MFU against its measured matmul peak too")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default=None,
                        help="mixed precision of the steps: auto (default) bf16 autocast on CUDA "
                             "and fp32 on the CPU; bf16 or fp16 autocast on any device (fp16 "
                             "with loss scaling); off: fp32")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``lomar bench-data``'s flags (lomar/benchmark/data_pipeline.py)."""
    parser.add_argument("--images", default=None,
                        help="folder of JPEGs (default: offline ImageNet-sized and 12-megapixel "
                             "JPEGs made from the photos inside scikit-image)")
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="input sizes (default 224 448 1024 2048; 1024 with --source or "
                             "--tiled)")
    parser.add_argument("--passes", type=int, default=5, help="timed passes over the files")
    parser.add_argument("--out", default="bench/results/data", help="output folder")
    parser.add_argument("--source", nargs="+", default=None, metavar="FILE",
                        help="time the window pipeline on these files alone, per sample (a "
                             "tiled file as data.region_size samples it): ms_per_sample, "
                             "tiles_per_sample, cache hit rate, peak RSS in data.json")
    parser.add_argument("--tiled", action="store_true",
                        help="per-sample timing of the offline tiled sources: a 12 MP JPEG, "
                             "the same photo as tiled pyramids (JPEG q90 as lomar convert "
                             "writes it, zstd, deflate, LZW, WebP, JPEG 2000, none), a "
                             "32768 x 32768 tiled JPEG pyramid")
    parser.add_argument("--samples", type=int, default=200,
                        help="samples per source with --source/--tiled (default 200)")
    parser.add_argument("--tile-cache-mb", type=float, nargs="+", default=[256],
                        help="tile cache per process with --source/--tiled, one run per value "
                             "(default 256; 0: every tile decoded, a cold cache)")


def config_from_args(args: argparse.Namespace, command: str):
    """The BenchConfig of parsed arguments: --quick's defaults, then explicit flags."""
    import torch

    from .run import BenchConfig

    values = dict(QUICK) if args.quick else {}
    for key in ("batch", "max_batch", "methods", "resolutions", "size", "warmup", "iters",
                "phase_iters", "budget_s", "ceilings", "out", "threads", "ops_backend",
                "data_workers", "data_images"):
        value = getattr(args, key)
        if value is not None:
            values[key] = tuple(value) if isinstance(value, list) else value
    if args.amp is not None:
        values["amp"] = {"auto": True, "off": False}.get(args.amp, args.amp)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return BenchConfig(device=device, command=command, **values)
