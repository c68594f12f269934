"""Typed dataclass configs, YAML presets from configs/, dotted command-line overrides.

    cfg = load_config("configs/quickstart.yaml", overrides=["train.steps=200", "policy.preset=tiny"])

A YAML file holds the sections `policy` (a `vla.policies.config.PolicyConfig`), `data` and `train`; a
missing field keeps its default and an unknown one is an error naming the valid fields. Nothing in a
config is executed: values are plain data, checked against the dataclass field types.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vla.errors import UserError
from vla.policies.config import LEGACY_KEYS, PolicyConfig, with_preset

# --- data -----------------------------------------------------------------------------------------


@dataclass
class StoreConfig:
    path: str
    weight: float = 1.0  # share of each batch drawn from this store


@dataclass
class DataConfig:
    stores: list[StoreConfig] = field(default_factory=list)
    val_fraction: float = 0.1  # episodes held out for the validation loss
    num_workers: int = 0  # DataLoader worker processes


# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainEvalConfig:
    """`train.eval`: simulator evaluation during training (`vla eval`'s settings are `vla.eval_config.EvalConfig`)."""

    suite: str = ""  # empty: no periodic simulator evaluation
    tasks: str = ""
    episodes: int = 5
    max_steps: int = 200
    every: int = 0  # steps between evaluations; 0: only at the end


@dataclass
class TrainConfig:
    out: str = "runs/train"
    steps: int = 2000
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 disables EMA; evaluation and checkpoints' weights use the EMA copy
    bf16: bool = True  # autocast matmuls to bfloat16 (CPU and GPU)
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    log_every: int = 10
    val_every: int = 200
    save_every: int = 500
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)


@dataclass
class Config:
    """A run: the policy it trains (saved with every checkpoint), the data it trains on, and how."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --- loading --------------------------------------------------------------------------------------


def _build(cls, values: dict, where: str):
    """Instantiate dataclass `cls` from a nested dict, checking names and types."""
    if not isinstance(values, dict):
        raise UserError(f"{where or 'config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown config field {where + '.' if where else ''}{unknown[0]}; valid: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}".lstrip(".")) for name, value in values.items()}
    if cls is PolicyConfig:
        kwargs = with_preset(kwargs)
    return cls(**kwargs)


def _coerce(hint, value, where: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _set_dotted(tree: dict, dotted: str, value) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise UserError(f"cannot set {dotted}: {name} is not a section")
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A Config from a YAML file (or defaults) with `section.field=value` overrides applied."""
    tree = read_tree(path, overrides)
    for old, new in LEGACY_KEYS.items():  # a key that moved is named with its new place, not "unknown"
        *parents, leaf = old.split(".")
        node = tree
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            raise UserError(f"config field {old} is now {new} (the policy's settings live in the policy section)")
    return config_from_tree(tree)


def config_from_tree(tree: dict) -> Config:
    """A Config from a nested dict (a parsed YAML file), with the checks of names and types."""
    return _build(Config, tree, "")


def load_dataclass(cls, path: str | Path | None = None, overrides: list[str] | None = None, what: str = "config"):
    """Any config dataclass `cls` (this module's `Config`, the robot config...) from YAML and overrides,
    with the same checks of names and types."""
    return _build(cls, read_tree(path, overrides, what), "")


def read_tree(path: str | Path | None = None, overrides: list[str] | None = None, what: str = "config") -> dict:
    """The nested dict of a YAML file (or empty) with dotted `section.field=value` overrides applied."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no {what} file {path}")
        tree = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
