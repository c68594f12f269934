"""Where and how a training run computes: its device (`train.device`), bfloat16 only where the device has
it natively, the numerics that decide its float results, and its place among `torchrun` processes."""

from __future__ import annotations

import logging
import os

import torch

from vla.config import Config
from vla.errors import UserError

log = logging.getLogger(__name__)


def train_device(cfg: Config) -> torch.device:
    """`train.device`: auto (CUDA when there is one, else the CPU) or a torch device this machine has."""
    name = cfg.train.device
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device {name!r} is not a torch device; valid: auto, cpu, cuda, cuda:<index>") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        have = torch.cuda.device_count()
        gpus = f"{have} CUDA device{'s' if have != 1 else ''}" + (f" (cuda:0-{have - 1})" if have else "")
        raise UserError(
            f"train.device {name!r}: this machine has {gpus}; valid: auto, cpu" + (", cuda" if have else "")
        )
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively: a CUDA GPU that supports it, or a CPU with AMX or
    AVX512-BF16. Elsewhere torch emulates bf16 and autocast slows training instead of speeding it up
    (measured on an AMD EPYC without AVX-512: a 512x512 bf16 matmul 250 ms, fp32 6.4 ms, one thread)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        flags = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own CPUID checks
        return any(getattr(torch.cpu, name, lambda: False)() for name in flags)
    return True  # other backends (mps, xpu): trust autocast


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """`train.bf16` where the device computes bf16 natively; fp32 (with a warning) where it would only emulate it."""
    if not cfg.train.bf16:
        return False
    if not native_bf16(device):
        log.warning("train.bf16: %s has no native bfloat16 (no AMX or AVX512-BF16): training in float32, "
                    "which is faster here", device)  # fmt: skip
        return False
    return True


def numerics(device: torch.device, bf16: bool) -> str:
    """What decides a run's float results on this machine, beside its seed: the precision, the kernels
    (on a CPU, the instruction set torch's kernels use) and the thread count. Two machines that differ in
    any of them train different weights from the same config (see the README's quickstart)."""
    precision = "bfloat16 autocast" if bf16 else "float32"
    if device.type == "cpu":
        return (f"{precision} on the CPU, {torch.backends.cpu.get_cpu_capability()} kernels, "
                f"{torch.get_num_threads()} threads")  # fmt: skip
    if device.type == "cuda":
        return f"{precision} on {torch.cuda.get_device_name(device)}"
    return f"{precision} on {device}"


def distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)
