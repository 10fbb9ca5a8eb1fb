"""The ``lomar`` command (also ``python -m lomar``).

    lomar pretrain [--config FILE.yaml] [key=value ...]
    lomar finetune [--config FILE.yaml] [key=value ...]
    lomar info

Overrides use the config's dotted keys (``optim.blr=1e-4 data.path=/data/train``);
``lomar pretrain --help-config`` (or ``finetune``) prints every key with its default."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from .config import ConfigError, load_config, to_dict


def _pretrain(args) -> int:
    from .engine import PretrainConfig, pretrain

    if args.help_config:
        print(yaml.safe_dump(to_dict(PretrainConfig()), sort_keys=False))
        return 0
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    summary = pretrain(cfg)
    print(json.dumps(summary, indent=1))
    return 0


def _finetune(args) -> int:
    from .engine import FinetuneConfig, finetune

    if args.help_config:
        print(yaml.safe_dump(to_dict(FinetuneConfig()), sort_keys=False))
        return 0
    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    summary = finetune(cfg)
    print(json.dumps(summary, indent=1))
    return 0


def _info(args) -> int:
    import lomar_ops

    print(lomar_ops.format_build_info())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lomar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="LoMaR pretraining (torchrun for several processes)")
    p.add_argument("--config", help="YAML file (keys as in --help-config)")
    p.add_argument("--help-config", action="store_true", help="print every key and its default")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(run=_pretrain)
    f = sub.add_parser("finetune", help="fine-tuning or linear probe of a (LoMaR-pretrained) "
                                        "encoder (torchrun for several processes)")
    f.add_argument("--config", help="YAML file (keys as in --help-config)")
    f.add_argument("--help-config", action="store_true", help="print every key and its default")
    f.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    f.set_defaults(run=_finetune)
    i = sub.add_parser("info", help="what lomar_ops was built with, which backends run here")
    i.set_defaults(run=_info)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"lomar {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
