"""The streaming step compiled for inference: ahead of time by AOTInductor on a CPU, by torch.compile elsewhere.

`VLAPolicy.compile_inference` puts one of these in place of `VLAPolicy._stream_forward`; both are called
with the same arguments and return the same readout states and actions.

Why ahead of time on a CPU: a `small` streaming step is a few dozen small kernels (6 tokens through the
trunk, one frame through the ViT), so what runs between and around the kernels counts. A `torch.compile`d
step runs Dynamo's guards and the generated Python wrapper on every call, and its library GEMM calls cost
30-60 us however small the product; the AOTInductor package is one C++ call, its weights folded in as
constants and each product's kernel chosen by timing (`BUILDS`). `bench/inference.py --compile` measures
it (README, inference table)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

Signature = tuple  # the shapes and dtypes of a call's tensors, and its observation keys

# Inductor settings to build the package with, tried in order. First each matrix product's kernel chosen by
# timing (max-autotune) between Inductor's C++ GEMM template (a micro-kernel generated for the product's shape,
# the weights packed in) and the library's (oneDNN). A streaming step's products have few rows (6 tokens through
# `small`'s trunk), where a library call costs 30-60 us whatever its size and the template's kernel 3-28 us;
# the ViT's 64-row products, and most of `gr1`'s, are faster in oneDNN. Timing the choices makes the first
# build take about two minutes on 2 cores (Inductor caches the timings: later builds about 45 s). Then the
# library's kernels alone.
_QUIET = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
BUILDS = {
    "GEMM kernels chosen by timing": {
        "freezing": True,
        "max_autotune": True,
        "max_autotune_gemm_backends": "CPP,ATEN",
        **_QUIET,
    },
    "library GEMMs": {"freezing": True},
}


class _StepModule(nn.Module):
    """`policy._stream_forward` over flat tensor arguments, as `torch.export` takes them: the step's
    observations (in `names` order), lang, queries, bias, write, then each layer's keys and values."""

    def __init__(self, policy: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.policy, self.names = policy, names

    def forward(self, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> (readout states,) or (readout states, actions): an exported graph returns tensors only."""
        n = len(self.names)
        lang, queries, bias, write = flat[n : n + 4]
        buffers = flat[n + 4 :]
        kv = [(buffers[i], buffers[i + 1]) for i in range(0, len(buffers), 2)]
        states, actions = self.policy._stream_forward(dict(zip(self.names, flat[:n])), lang, queries, bias, kv, write)
        return (states,) if actions is None else (states, actions)


class AotStep:
    """The streaming step as an AOTInductor package, exported and compiled on the first call with a new
    signature (on 2 cores 35-45 s with Inductor's cache, about 2 min without; a policy's calls share one
    signature, see `VLAPolicy._take`).
    The package holds the weights it was compiled with: compile after loading weights. The key/value
    buffers are written in place, as by the eager step. A step torch.export cannot trace (or a missing
    C++ toolchain) is compiled by torch.compile instead, with a warning."""

    def __init__(self, policy: nn.Module):
        self.policy = policy
        self._runners: dict[Signature, object] = {}
        self._fallback = None  # torch.compile's step, once a step could not be compiled ahead of time
        self._workdir = tempfile.TemporaryDirectory(prefix="vla-aot-")

    def __call__(self, step: dict, lang: torch.Tensor, queries: torch.Tensor, bias: torch.Tensor, kv: list,
                 write: torch.Tensor) -> tuple:  # fmt: skip
        if queries is None:
            raise ValueError("the compiled step always reads out: pass the readout queries (VLAPolicy._take does)")
        if self._fallback is not None:
            return self._fallback(step, lang, queries, bias, kv, write)
        names = tuple(step)
        flat = (*(step[k] for k in names), lang, queries, bias, write, *(t for pair in kv for t in pair))
        signature = (names, *((tuple(t.shape), t.dtype) for t in flat))
        if signature not in self._runners:
            runner = self._compile(names, flat)
            if runner is None:
                self._fallback = jit_step(self.policy)
                return self._fallback(step, lang, queries, bias, kv, write)
            self._runners[signature] = runner
        states, *actions = self._runners[signature](*flat)
        return states, actions[0] if actions else None

    def _compile(self, names: tuple[str, ...], flat: tuple[torch.Tensor, ...]):
        """Export the step at these example arguments and build its package -> the loaded package, or None
        where export or every build fails (logged)."""
        start = time.perf_counter()
        path = Path(self._workdir.name) / f"step{len(self._runners)}.pt2"
        try:
            # Traced on copies: the caller's key/value buffers are written only by the calls that follow.
            program = torch.export.export(_StepModule(self.policy, names), tuple(t.clone() for t in flat))
        except Exception as e:  # noqa: BLE001 - whatever torch.export cannot trace, torch.compile can run
            log.warning("the streaming step cannot be exported (%s); using torch.compile", _first_line(e))
            return None
        for name, configs in BUILDS.items():
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
                runner = torch._inductor.aoti_load_package(str(path))
            except Exception as e:  # noqa: BLE001 - a GEMM the template cannot take, a missing C++ toolchain
                log.warning("building the streaming step with %s failed (%s)", name, _first_line(e))
                continue
            log.info("compiled the streaming step ahead of time (AOTInductor, %s) in %.1f s", name,
                     time.perf_counter() - start)  # fmt: skip
            return runner
        log.warning("the streaming step cannot be compiled ahead of time; using torch.compile")
        return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def jit_step(policy: nn.Module):
    """The streaming step by torch.compile, weights frozen (a device without AOTInductor's ahead-of-time
    toolchain here, or a step torch.export cannot trace). Freezing is an Inductor setting that Dynamo reads
    while it traces, so it is set around every call, not only in the compile options."""
    options = {"freezing": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    compiled = torch.compile(policy._stream_forward, options=options, dynamic=False)

    def step(*args):
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args)

    return step
