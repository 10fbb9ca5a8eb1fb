"""Typed configs: dataclasses filled from a YAML file, then from command-line
overrides ``key.sub=value`` (values parsed as YAML: 3, 1.5e-4, true, [224, 224]).

The file is a path, or the name of a config shipped inside the package
(``lomar/configs/<name>.yaml``, listed by ``lomar configs``), so that an installed
package finds its configs wherever it is run from. Unknown keys and values of the
wrong type fail before any work starts, naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import importlib.resources
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the config's schema."""


def _coerce(key: str, value, kind):
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        allowed = " or ".join(_describe(o) for o in options)
        raise ConfigError(f"config: {key} must be {allowed}, got {value!r} "
                          f"({type(value).__name__})")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"config: {key} must be a mapping, got {value!r}")
        return from_dict(kind, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {key} must be a list, got {value!r}")
        args = typing.get_args(kind)
        item = args[0] if args else typing.Any
        items = [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config: {key} must be a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(f"config: {key} must be one of {list(allowed)}, got {value!r}")
        return value
    if kind is typing.Any:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, kind):
        return value
    raise ConfigError(f"config: {key} must be {getattr(kind, '__name__', kind)}, "
                      f"got {value!r} ({type(value).__name__})")


def _describe(kind) -> str:
    """A type as an error message names what it allows."""
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is typing.Literal:
        return f"one of {list(typing.get_args(kind))}"
    if typing.get_origin(kind) in (list, tuple):
        return "a list"
    return getattr(kind, "__name__", str(kind))


def _fields(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls, data: dict, prefix: str = ""):
    """An instance of dataclass ``cls`` from a (nested) dict; missing keys keep defaults."""
    fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"config: unknown key {prefix}{unknown[0]!s}; known keys"
                          f"{' of ' + prefix[:-1] if prefix else ''}: {', '.join(fields)}")
    values = {k: _coerce(prefix + k, v, fields[k]) for k, v in data.items()}
    return cls(**values)


def apply_override(cfg, override: str):
    """``cfg`` with one ``dotted.key=value`` override applied (a new instance)."""
    if "=" not in override:
        raise ConfigError(f"config: override {override!r} must look like key=value")
    key, raw = override.split("=", 1)
    key = key.strip().lstrip("-")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return _replace_path(cfg, key.split("."), value, key)


def _replace_path(cfg, parts: list[str], value, full_key: str):
    fields = _fields(type(cfg))
    head = parts[0]
    done = full_key[: len(full_key) - len(".".join(parts))]
    if head not in fields:
        raise ConfigError(f"config: unknown key {done}{head}; known keys"
                          f"{' of ' + done[:-1] if done else ''}: {', '.join(fields)}")
    if len(parts) == 1:
        return dataclasses.replace(cfg, **{head: _coerce(full_key, value, fields[head])})
    child = getattr(cfg, head)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"config: {done}{head} is not a section, so {full_key} does not exist")
    return dataclasses.replace(cfg, **{head: _replace_path(child, parts[1:], value, full_key)})


def packaged_configs() -> dict[str, Path]:
    """``{name: path}`` of the YAML configs shipped in the package (lomar/configs/),
    sorted by name; the name is the file name without ``.yaml``."""
    folder = importlib.resources.files("lomar") / "configs"
    files = [Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")]
    return {f.name[:-len(".yaml")]: f for f in sorted(files)}


def config_description(path: str | Path) -> str:
    """The first comment line of a config file (its one-line description), or ""."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def resolve_config(value: str | Path) -> Path:
    """The config file ``value`` names: an existing file as given, else the packaged
    config of that name (``pretrain_vit_base_448``, with or without ``.yaml``)."""
    path = Path(value)
    if path.is_file():
        return path
    packaged = packaged_configs()
    name = path.name[:-len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and name in packaged:
        return packaged[name]
    raise ConfigError(f"config: file not found: {value} (nor is it a packaged config; "
                      f"packaged: {', '.join(packaged)}; 'lomar configs' lists them)")


def load_config(cls, path=None, overrides: typing.Iterable[str] = ()):
    """Defaults of ``cls``, then the YAML file ``path`` (a path or a packaged config's
    name, see :func:`resolve_config`; or a list of them, each layered over the ones
    before: mappings merged key by key, so a fragment such as ``lomar stats``' output
    sets data.mean and data.std and keeps the rest), then ``overrides``; then
    ``cfg.validate()`` when the class defines it."""
    data = {}
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    for p in paths:
        p = resolve_config(p)
        layer = yaml.safe_load(p.read_text()) or {}
        if not isinstance(layer, dict):
            raise ConfigError(f"config: {p} must hold a mapping at the top level")
        data = _merge(data, layer)
    cfg = from_dict(cls, data)
    for override in overrides:
        cfg = apply_override(cfg, override)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _merge(base: dict, layer: dict) -> dict:
    """``layer`` over ``base``: nested mappings merged, any other value replaced."""
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(cfg) -> dict:
    """The config as plain dicts and lists (for YAML, logs and checkpoints)."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def save_config(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
