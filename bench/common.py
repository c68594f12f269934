"""Shared pieces of the benchmarks: a policy of a given preset on Meta-World-shaped features, and what the
machine was doing while a benchmark ran."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from vla import keys
from vla.config import load_config
from vla.errors import UserError
from vla.options import HelpFormatter
from vla.policies.config import PolicyConfig, with_preset
from vla.policies.vla_policy import VLAPolicy
from vla.train_device import train_device

CAMERA = keys.image_key("corner")
FEATURES = {
    CAMERA: keys.image_spec("corner", 64),
    keys.OBS_STATE: keys.state_spec("end-effector xyz + gripper", 4),
    keys.ACTION: keys.action_spec("end-effector dxyz + gripper", 4),
}


def make_policy(
    preset: str, history: int, chunk: int = 10, device: str = "cpu", language_model: str = "minilm", **options
) -> VLAPolicy:
    """A policy with seeded random weights (the same for the same arguments); `options`: VLAPolicy's
    inference options (foresee, streaming)."""
    features = {k: s.to_json() for k, s in FEATURES.items()}
    config = PolicyConfig(**with_preset(dict(preset=preset, history=history, chunk=chunk, features=features,
                                             language_model=language_model)))  # fmt: skip
    torch.manual_seed(0)
    return VLAPolicy(config, **options).to(device)


def random_observation(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        CAMERA: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        keys.OBS_STATE: rng.normal(size=4).astype(np.float32),
    }


def random_batch(batch_size: int, history: int, chunk: int, seed: int = 0, horizons: int = 1) -> dict:
    """A collated training batch of the sampler's shapes, the last step supervised, `horizons` future frames
    (random content: the cost does not depend on it)."""
    g = torch.Generator().manual_seed(seed)
    future = keys.future_key(CAMERA)
    return {
        CAMERA: torch.randint(0, 256, (batch_size, history, 64, 64, 3), generator=g, dtype=torch.uint8),
        keys.pad_key(CAMERA): torch.zeros(batch_size, history, dtype=torch.bool),
        keys.OBS_STATE: torch.randn(batch_size, history, 4, generator=g),
        keys.pad_key(keys.OBS_STATE): torch.zeros(batch_size, history, dtype=torch.bool),
        keys.ACTION: torch.randn(batch_size, chunk, 4, generator=g),
        keys.pad_key(keys.ACTION): torch.zeros(batch_size, chunk, dtype=torch.bool),
        future: torch.randint(0, 256, (batch_size, horizons, 64, 64, 3), generator=g, dtype=torch.uint8),
        keys.pad_key(future): torch.zeros(batch_size, horizons, dtype=torch.bool),
        keys.INSTRUCTION: ["press the button from the top"] * batch_size,
    }


def machine() -> dict:
    """The machine a figure was measured on, and how busy it was: CPU model, cores, torch threads and the
    1-minute load average (a figure measured beside other work is slower; ratios within one run hold better)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_1min": round(os.getloadavg()[0], 2)}  # fmt: skip


def describe(info: dict) -> str:
    """One line for the table's header: `AMD EPYC, 2 cores, 2 torch threads, load 0.4 -> 1.2`."""
    load = info["load_1min"] if "load_after" not in info else f"{info['load_1min']} -> {info['load_after']}"
    return f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, load {load}"


class _DocFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """vla's help (every flag's default) with the docstring's commands laid out as written."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as every vla command: no usage block
        fail(message)


def fail(message: str) -> None:
    """A bad flag or setting: one line naming it on stderr, exit status 2, nothing written."""
    print(f"{Path(sys.argv[0]).name}: {message}", file=sys.stderr)
    sys.exit(2)


def bench_device(name: str) -> torch.device:
    """A bench's `--device`: auto (CUDA when there is one, else the CPU) or a torch device this machine has,
    under train.device's rules and one-line errors."""
    try:
        return train_device(load_config(overrides=[f"train.device={name}"]))
    except UserError as e:
        fail(str(e).replace("train.device", "--device"))


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A bench's parser: its docstring's first paragraph as the description, the rest as the epilog, and
    argparse's own errors (a bad int, an unknown flag) as one line through `fail`."""
    first = doc.split("\n\n")[0]
    return _OneLineParser(description=" ".join(first.split()), formatter_class=_DocFormatter,
                          epilog=doc[len(first):])  # fmt: skip
