"""lomar.config: YAML + overrides into typed dataclasses, with named errors."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

import lomar
from lomar.config import ConfigError, apply_override, load_config, save_config, to_dict


@dataclass(frozen=True)
class Optim:
    blr: float = 1.5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: Optional[float] = None


@dataclass(frozen=True)
class Job:
    model: str = "lomar_vit_base_patch16"
    input_size: int = 224
    amp: bool = True
    sampling: Literal["image", "batch"] = "image"
    optim: Optim = field(default_factory=Optim)

    def validate(self):
        if self.input_size % 16:
            raise ConfigError(f"config: input_size must be a multiple of 16, got {self.input_size}")


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input_size: 384\noptim:\n  blr: 1e-3\n  betas: [0.8, 0.9]\n")
    cfg = load_config(Job, path, ["optim.clip_grad=3", "--amp=false", "sampling=batch"])
    assert cfg.input_size == 384 and cfg.amp is False and cfg.sampling == "batch"
    assert cfg.optim == Optim(blr=1e-3, betas=(0.8, 0.9), clip_grad=3.0)
    assert cfg.model == "lomar_vit_base_patch16"


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(Job, None, ["optim.blr=2.5e-4", "input_size=448"])
    again = load_config(Job, save_config(cfg, tmp_path / "saved.yaml"))
    assert again == cfg and to_dict(cfg)["optim"]["betas"] == [0.9, 0.95]


@pytest.mark.parametrize("override,match", [
    ("optim.lr=1", r"unknown key optim.lr; known keys of optim: blr, betas, clip_grad"),
    ("inputsize=3", r"unknown key inputsize; known keys: model, input_size"),
    ("input_size=big", r"input_size must be int, got 'big' \(str\)"),
    ("amp=3", r"amp must be bool, got 3"),
    ("optim.betas=0.9", r"optim.betas must be a list"),
    ("optim.betas=[0.9, x]", r"optim.betas\[1\] must be float, got 'x'"),
    ("sampling=window", r"sampling must be one of \['image', 'batch'\]"),
    ("input_size", r"override 'input_size' must look like key=value"),
    ("model.name=x", r"model is not a section"),
    ("input_size=100", r"input_size must be a multiple of 16, got 100"),
])
def test_bad_overrides_are_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Job, None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(Job, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Job, tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("optim:\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match="unknown key optim.momentum"):
        load_config(Job, tmp_path / "bad.yaml")


def test_override_returns_new_instance():
    cfg = Job()
    assert apply_override(cfg, "optim.blr=1").optim.blr == 1.0 and cfg.optim.blr == 1.5e-4


PACKAGED = {"demo_bands", "demo_detect", "demo_pretrain", "demo_probe", "demo_segment",
            "demo_slides", "detect_vitdet_base_1024", "finetune_vit_base_448",
            "pretrain_vit_base_448", "segment_upernet_base_512"}


def test_packaged_configs_by_name_or_path(tmp_path, monkeypatch):
    import yaml

    from lomar.config import config_description, from_dict, packaged_configs, resolve_config
    from lomar.engine import DetectConfig, FinetuneConfig, PretrainConfig
    from lomar.engine.segment import SegmentConfig

    configs = packaged_configs()
    assert set(configs) == PACKAGED and all(p.suffix == ".yaml" for p in configs.values())
    for name, path in configs.items():
        assert config_description(path), f"{name}: no first comment line"
        job = (DetectConfig if "detect" in name else SegmentConfig if "segment" in name else
               FinetuneConfig if "probe" in name or "finetune" in name else PretrainConfig)
        # Only known keys of the right types (its data paths need not exist here).
        from_dict(job, yaml.safe_load(path.read_text()))
    monkeypatch.chdir(tmp_path)
    assert resolve_config("demo_pretrain") == configs["demo_pretrain"]
    assert resolve_config("demo_pretrain.yaml") == configs["demo_pretrain"]
    cfg = load_config(PretrainConfig, "demo_pretrain", ["max_steps=3"])
    assert cfg.mask.window_size == 5 and cfg.max_steps == 3
    # A file wins over a name; a path with folders is never a name.
    (tmp_path / "demo_pretrain").write_text("batch_size: 7\n")
    assert load_config(PretrainConfig, "demo_pretrain", ["data.path=x"]).batch_size == 7
    with pytest.raises(ConfigError, match=r"file not found: configs/demo_pretrain.yaml \(nor is "
                                          r"it a packaged config; packaged: demo_bands, demo_detect, demo_pretrain, "):
        resolve_config("configs/demo_pretrain.yaml")


def test_lomar_configs_command(capsys):
    from lomar.cli import main

    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {line.split()[0] for line in lines} == PACKAGED
    assert any("9 windows" in line for line in lines if line.startswith("pretrain_vit_base_448"))
    assert main(["configs", "demo_probe"]) == 0
    assert "linear_probe: true" in capsys.readouterr().out
    assert main(["configs", "nope"]) == 2
    assert "no packaged config 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"lomar {lomar.__version__}"
