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
from vla.options import check_fields, option
from vla.policies.config import PolicyConfig, legacy_keys, migrate_values, with_preset

# --- data -----------------------------------------------------------------------------------------


@dataclass
class StoreConfig:
    path: str = option(help="a store path or fsspec URL")
    weight: float = option(1.0, gt=0.0, help="share of the batches drawn from this store")

    def __post_init__(self):
        check_fields(self, "data.stores[]")


@dataclass
class DataConfig:
    stores: list[StoreConfig] = field(default_factory=list)
    val_fraction: float = option(0.1, min=0.0, max=0.9, help="episodes held out for the validation loss")
    num_workers: int = option(0, min=0, help="DataLoader worker processes")

    def __post_init__(self):
        check_fields(self, "data")


# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainEvalConfig:
    """`train.eval`: simulator evaluation during training (`vla eval`'s settings are `vla.eval_config.EvalConfig`)."""

    suite: str = option("", help="empty: no periodic simulator evaluation")
    tasks: str = option("", help="a group or comma-separated task names")
    episodes: int = option(5, min=1, help="episodes per task")
    max_steps: int = option(200, min=1, help="episode step limit")
    every: int = option(0, min=0, help="steps between evaluations; 0: only at the end")

    def __post_init__(self):
        check_fields(self, "train.eval")


@dataclass
class TrainConfig:
    out: str = option("runs/train", help="the run directory")
    steps: int = option(2000, min=1, help="optimizer steps")
    batch_size: int = option(32, min=1, help="windows per micro-batch")
    grad_accum: int = option(1, min=1, help="micro-batches per optimizer step")
    lr: float = option(3e-4, gt=0.0, help="peak learning rate")
    weight_decay: float = option(0.05, min=0.0, help="AdamW weight decay (matrices only)")
    warmup_steps: int = option(100, min=0, help="linear warmup steps")
    min_lr_ratio: float = option(0.1, min=0.0, max=1.0, help="cosine decays to lr * this")
    grad_clip: float = option(1.0, gt=0.0, help="gradient norm clip")
    ema_decay: float = option(0.999, min=0.0, max=0.99999, help="0 disables EMA; checkpoints carry the EMA weights")
    bf16: bool = option(True, help="autocast matmuls to bfloat16 where the device has it natively (CUDA, AMX)")
    compile: bool = option(False, help="torch.compile the policy's training pass (Inductor fuses the casts, "
                           "GELUs and norms between the matmuls): faster steps after a build of a minute or two, "
                           "and one more build for each new batch shape (README, training throughput)")  # fmt: skip
    seed: int = option(0, min=0, help="the same seed gives the same run")
    device: str = option("auto", help="auto: cuda when available, else cpu; or a torch device (cpu, cuda:1)")
    log_every: int = option(10, min=1, help="steps between training-metric lines")
    val_every: int = option(200, min=1, help="steps between validation losses")
    save_every: int = option(500, min=1, help="steps between checkpoints")
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)

    def __post_init__(self):
        check_fields(self, "train")


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
    if cls is PolicyConfig:
        values = migrate_values(values)
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
    for old, new, _, _ in legacy_keys(tree):  # a key that moved is named with its new place, not "unknown"
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
        tree = read_yaml(path)
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _parse_yaml(raw, f"override {item!r}"))
    return tree


def read_yaml(path: str | Path) -> dict:
    """A YAML file that holds a mapping (an empty file: {}). Malformed YAML, or a file holding a scalar or
    a list, is a one-line UserError naming the file."""
    tree = _parse_yaml(Path(path).read_text(), str(path)) or {}
    if not isinstance(tree, dict):
        raise UserError(f"{path} must hold a mapping (key: value lines), got {tree!r}")
    return tree


def _parse_yaml(text: str, what: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{what} is not valid YAML: {problem}{where}") from None


def given_keys(tree: dict, cls=Config, prefix: str = "") -> list[str]:
    """The dotted fields a config tree (a YAML file with overrides, see `read_tree`) sets, e.g.
    ["policy.preset", "train.lr", "train.eval.suite"]: what a user asked for, not what defaults filled in."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.name in tree:
            if dataclasses.is_dataclass(hints[f.name]) and isinstance(tree[f.name], dict):
                keys += given_keys(tree[f.name], hints[f.name], f"{prefix}{f.name}.")
            else:
                keys.append(prefix + f.name)
    return keys


def field_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every leaf field of a config dataclass as a dotted key (sections are walked, not listed)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += field_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def get_field(cfg, key: str):
    """The value of dotted `key` (e.g. "train.eval.suite") in a config dataclass."""
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


def set_field(cfg, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for name in parents:
        cfg = getattr(cfg, name)
    setattr(cfg, leaf, value)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Any config dataclass (the run's `Config`, a `PolicyConfig`) as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
