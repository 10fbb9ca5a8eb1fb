"""The ``lomar`` command (also ``python -m lomar``).

    lomar pretrain [--config NAME|FILE.yaml] [key=value ...]
    lomar finetune [--config NAME|FILE.yaml] [key=value ...]
    lomar configs [NAME]
    lomar detect [--config NAME|FILE.yaml] [key=value ...]
    lomar segment [--config NAME|FILE.yaml] [key=value ...]
    lomar visualize --checkpoint output/run/checkpoint-last.pt [--images DIR ...]
    lomar bench [--device cuda|cpu] [--quick] [--out DIR] [...]
    lomar bench-data [--images DIR] [--sizes 224 448 1024 2048] [--out DIR]
    lomar bench-data --source FILE [FILE ...] | --tiled [--sizes 1024] [--out DIR]
    lomar report probe|detect|segment OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]
    lomar convert SRC [SRC ...] DST [--tile 256] [--quality 90 | --lossless] [--jobs N]
    lomar stats PATH [--out stats.yaml]
    lomar info

``--config`` takes a YAML file or the name of a config shipped with the package
(``lomar configs`` lists them). Overrides use the config's dotted keys
(``optim.blr=1e-4 data.path=/data/train``); ``lomar pretrain --help-config`` (or
``finetune``, ``detect``, ``segment``) prints every key with its default. ``lomar convert`` writes
images (big photos, untiled TIFFs, slides, folders of them) as tiled pyramidal TIFFs
that ``lomar.data.open_tiled`` reads window by window (docs/tiled-images.md)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import yaml

from ._version import __version__
from .config import ConfigError, config_description, load_config, packaged_configs, to_dict


def _run_job(config_cls, job, args) -> int:
    """A training job from --config + overrides (or its keys, with --help-config)."""
    if args.help_config:
        print(yaml.safe_dump(to_dict(config_cls()), sort_keys=False))
        return 0
    summary = job(load_config(config_cls, args.config, args.overrides))
    print(json.dumps(summary, indent=1))
    return 0


def _pretrain(args) -> int:
    from .engine import PretrainConfig, pretrain

    return _run_job(PretrainConfig, pretrain, args)


def _visualize(args) -> int:
    from .visualize import visualize

    kwargs = yaml.safe_load(args.model_kwargs) if args.model_kwargs else None
    try:
        path = visualize(args.checkpoint, args.images, args.out, num_images=args.num_images,
                         window_size=args.window_size, mask_ratio=args.mask_ratio, seed=args.seed,
                         model=args.model, model_kwargs=kwargs, input_size=args.input_size,
                         bands=args.bands, stretch=args.stretch)
    except (ValueError, OSError) as exc:  # OSError: a missing or unreadable file
        print(f"lomar visualize: {str(exc).removeprefix('visualize: ')}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _bench(args) -> int:
    from . import benchmark

    command = "lomar " + " ".join(shlex.quote(a) for a in args.argv)
    try:
        cfg = benchmark.config_from_args(args, command)
        cfg.validate()
    except ValueError as exc:
        print(f"lomar bench: {exc}", file=sys.stderr)
        return 2
    from .benchmark.report import ratios_markdown
    from .benchmark.run import run

    print(ratios_markdown(run(cfg)))
    return 0


def _bench_data(args) -> int:
    from .benchmark.data_pipeline import run

    tiled_mode = bool(args.source or args.tiled)
    sizes = args.sizes or ([1024] if tiled_mode else [224, 448, 1024, 2048])
    if any(s < 112 or s % 16 for s in sizes):
        print(f"lomar bench-data: --sizes must be multiples of 16 (the patch size) of at least "
              f"112 (four 7x7-patch windows), got {sizes}", file=sys.stderr)
        return 2
    if tiled_mode:
        from .benchmark import tiled_data

        if args.samples < 1 or min(args.tile_cache_mb) < 0:
            print(f"lomar bench-data: --samples must be >= 1 and --tile-cache-mb >= 0, got "
                  f"{args.samples} and {args.tile_cache_mb}", file=sys.stderr)
            return 2
        try:
            tiled_data.run(args.source or [], args.out, sizes=sizes, samples=args.samples,
                           tile_cache_mb=args.tile_cache_mb, tiled=args.tiled)
        except (ValueError, OSError) as exc:
            print(f"lomar bench-data: {exc}", file=sys.stderr)
            return 2
        print(f"{args.out}/data.json")
        return 0
    if args.passes < 1:
        print(f"lomar bench-data: --passes must be >= 1, got {args.passes}", file=sys.stderr)
        return 2
    try:
        run(args.images, sizes, args.out, passes=args.passes)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lomar bench-data: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}/data.json, {args.out}/data.png")
    return 0


def _finetune(args) -> int:
    from .engine import FinetuneConfig, finetune

    return _run_job(FinetuneConfig, finetune, args)


def _configs(args) -> int:
    """The packaged configs (name and description), or one of them as YAML text."""
    configs = packaged_configs()
    if args.name:
        name = args.name[:-len(".yaml")] if args.name.endswith(".yaml") else args.name
        if name not in configs:
            print(f"lomar configs: no packaged config {args.name!r}; packaged: "
                  f"{', '.join(configs)}", file=sys.stderr)
            return 2
        print(configs[name].read_text(), end="")
        return 0
    width = max(map(len, configs))
    for name, path in configs.items():
        print(f"{name:<{width}}  {config_description(path)}")
    return 0


def _detect(args) -> int:
    from .engine import DetectConfig, detect

    return _run_job(DetectConfig, detect, args)


def _segment(args) -> int:
    from .engine.segment import SegmentConfig, segment

    return _run_job(SegmentConfig, segment, args)


def _report(args) -> int:
    from .reports import parse_runs, report

    try:
        lines = report(args.kind, args.out, parse_runs(args.runs))
    except (ValueError, FileNotFoundError) as exc:
        print(f"lomar report: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _convert(args) -> int:
    from .data.convert import convert_images

    try:
        result = convert_images(args.sources, args.dst, tile=args.tile, quality=args.quality,
                                lossless=args.lossless, jobs=args.jobs)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lomar convert: {exc}", file=sys.stderr)
        return 2
    for src, reason in result["failed"]:
        print(f"lomar convert: {src}: {reason}", file=sys.stderr)
    print(f"{len(result['converted'])} converted, {len(result['skipped'])} already done, "
          f"{len(result['failed'])} failed -> {args.dst}")
    return 1 if result["failed"] else 0


def _stats(args) -> int:
    from pathlib import Path

    from .data.stats import band_statistics, plot_histograms

    try:
        stats = band_statistics(args.path, max_files=args.max_files, seed=args.seed,
                                region=args.region, regions_per_file=args.regions_per_file,
                                progress=True)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    for path, reason in stats.skipped:
        print(f"lomar stats: skipped {path}: {reason}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(stats.yaml())
        figure = plot_histograms(stats, out.with_suffix(".png"))
        print(f"{out} (use it as a second --config), {figure}")
    else:
        print(stats.yaml(), end="")
    return 0


def _info(args) -> int:
    import lomar_ops

    print(lomar_ops.format_build_info())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lomar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lomar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "a packaged config's name (see 'lomar configs') or a YAML file (keys as in " \
                  "--help-config)"
    def add_job(name, help, run):
        job = sub.add_parser(name, help=help)
        job.add_argument("--config", action="append", help=config_help + "; repeat it to "
                         "layer files, later over earlier (e.g. a lomar stats fragment)")
        job.add_argument("--help-config", action="store_true",
                         help="print every key and its default")
        job.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        job.set_defaults(run=run)

    add_job("pretrain", "LoMaR pretraining (torchrun for several processes)", _pretrain)
    v = sub.add_parser("visualize", help="reconstruction figure (the paper's Fig. 5) as a PNG")
    v.add_argument("--checkpoint", required=True,
                   help="checkpoint-*.pt of 'lomar pretrain', or model.safetensors")
    v.add_argument("--images", nargs="+", help="image files or folders (default: demo photos)")
    v.add_argument("--num-images", type=int, default=4, help="rows of the figure")
    v.add_argument("--window-size", type=int, default=7, help="K, patches per window side")
    v.add_argument("--mask-ratio", type=float, default=0.8, help="masked share of a window")
    v.add_argument("--seed", type=int, default=0, help="seed of the window and mask draw")
    v.add_argument("--input-size", type=int, help="image side (default: the run's input size)")
    v.add_argument("--model", help="model name, for a .safetensors file without config.yaml")
    v.add_argument("--model-kwargs", help="YAML mapping of model arguments, with --model")
    v.add_argument("--out", help="the PNG (default: reconstruction.png beside the checkpoint)")
    v.add_argument("--bands", nargs="+", type=int, metavar="BAND",
                   help="the model's bands drawn: three (red, green, blue) or one (grey); "
                        "default the first three, or the first for a 1- or 2-band model")
    v.add_argument("--stretch", action=argparse.BooleanOptionalAction, default=None,
                   help="stretch each drawn band from its 2nd-98th percentile to black-white "
                        "(default: on for runs of the files' own bands, off for RGB runs)")
    v.set_defaults(run=_visualize)
    b = sub.add_parser("bench", help="training-step throughput: LoMaR vs MAE vs BEiT")
    from .benchmark import add_arguments as add_bench_arguments

    add_bench_arguments(b)
    b.set_defaults(run=_bench)
    d = sub.add_parser("bench-data", help="input pipeline cost per image: full crops vs only "
                                          "the windows (decode, resample, bytes to the device)")
    from .benchmark import add_data_arguments

    add_data_arguments(d)
    d.set_defaults(run=_bench_data)
    add_job("finetune", "fine-tuning or linear probe of a (LoMaR-pretrained) encoder "
                        "(torchrun for several processes)", _finetune)
    c = sub.add_parser("configs", help="the configs shipped with the package, or one of them")
    c.add_argument("name", nargs="?", help="print this config's YAML (to copy and edit)")
    c.set_defaults(run=_configs)
    add_job("detect", "Mask R-CNN / Faster R-CNN with the encoder as a ViTDet backbone, on "
                      "COCO-format data (torchrun for several processes)", _detect)
    add_job("segment", "UperNet semantic segmentation with the encoder as a ViTDet backbone, "
                       "on ADE20K-layout data (torchrun for several processes)", _segment)
    r = sub.add_parser("report", help="compare finished runs from their logs: a PNG and the "
                                      "first run against the others")
    r.add_argument("kind", choices=("probe", "detect", "segment"),
                   help="probe: val top-1 per epoch; detect: box and mask AP per evaluation; "
                        "segment: mIoU per evaluation and the last IoU per class")
    r.add_argument("out", help="the PNG to write")
    r.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR", help="a run's folder and its label")
    r.set_defaults(run=_report)
    cv = sub.add_parser("convert", help="images (big photos, untiled TIFFs, slides, folders) to "
                                        "tiled pyramidal TIFFs; resumable")
    cv.add_argument("sources", nargs="+", metavar="SRC", help="image files or folders of them")
    cv.add_argument("dst", metavar="DST", help="output folder, or a .tif file for one SRC file")
    cv.add_argument("--tile", type=int, default=256, help="tile side, a multiple of 16")
    codec = cv.add_mutually_exclusive_group()
    codec.add_argument("--quality", type=int, default=90, help="JPEG quality (8-bit grey or RGB)")
    codec.add_argument("--lossless", action="store_true",
                       help="zstd instead of JPEG: every value, the dtype and the bands kept")
    cv.add_argument("--jobs", type=int, default=1, help="files converted in parallel")
    cv.set_defaults(run=_convert)
    st = sub.add_parser("stats", help="per-band mean, std, min, max and histograms of a data "
                                      "set, as a config fragment (data.mean, data.std)")
    st.add_argument("path", help="a folder of images or tiled files (searched recursively), "
                                 "or one file")
    st.add_argument("--out", help="the YAML fragment to write (its histograms beside it as "
                                  ".png); default: print the fragment")
    st.add_argument("--max-files", type=int, default=1000,
                    help="files read, drawn with --seed when there are more (default 1000)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--region", type=int, default=1024,
                    help="side of the boxes read from files over 16 Mi pixels (default 1024)")
    st.add_argument("--regions-per-file", type=int, default=8,
                    help="boxes per big file (default 8)")
    st.set_defaults(run=_stats)
    i = sub.add_parser("info", help="what lomar_ops was built with, which backends run here")
    i.set_defaults(run=_info)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"lomar {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
