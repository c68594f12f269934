"""`--policy lerobot:PATH`: a LeRobot-trained policy (ACT, Diffusion Policy) behind vla's `Policy`
interface, so `vla eval` and `vla control` judge it exactly as they judge vla's own.

LeRobot 0.4.4 and vla do not install into one environment (LeRobot caps torch below 2.11, vla pins
2.13), so the policy runs in LeRobot's: a bridge process, `vla.policies.lerobot_worker`, started with the
Python named by `VLA_LEROBOT_PYTHON` (`bash bench/build_lerobot_env.sh ENV` builds one), or with this
Python when lerobot imports here. It loads the checkpoint with LeRobot's own code and answers each
observation with one action over a pipe (the worker's module docstring has the protocol).

LeRobot's policy keeps its own action queue (ACT's chunk of `n_action_steps`, temporal ensembling) and
observation history (Diffusion's `n_obs_steps`), and `select_action` returns the action due now: so to vla
it is a policy with history 1, chunk 1, `n_action_steps` 1, asked every step, and `reset` resets it.

PATH is a `pretrained_model` directory (config.json, model.safetensors, the processors' files) or a
`lerobot-train` output directory (its `checkpoints/last/pretrained_model` is used).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

import numpy as np

from vla import keys
from vla.errors import UserError
from vla.policies.base import Prediction

log = logging.getLogger(__name__)

PREFIX = "lerobot:"
PYTHON_ENV = "VLA_LEROBOT_PYTHON"
HOW = (f"--policy lerobot:PATH needs LeRobot 0.4.4 in its own environment: run `bash bench/build_lerobot_env.sh "
       f"ENV` and set {PYTHON_ENV}=ENV/bin/python")  # fmt: skip
WORKER = Path(__file__).with_name("lerobot_worker.py")


def is_lerobot(spec: str) -> bool:
    return spec.startswith(PREFIX)


def lerobot_python() -> str:
    """The Python that runs the worker: $VLA_LEROBOT_PYTHON, else this one if lerobot imports here."""
    python = os.environ.get(PYTHON_ENV)
    if python:
        if not os.access(python, os.X_OK):
            raise UserError(f"{PYTHON_ENV}={python} is not an executable Python; {HOW}")
        return python
    if importlib.util.find_spec("lerobot") is not None:
        return sys.executable
    raise UserError(HOW)


def pretrained_dir(path: str) -> Path:
    """The directory holding config.json + model.safetensors: PATH itself, or a training run's last checkpoint."""
    root = Path(path)
    for candidate in (root, root / "pretrained_model", root / "checkpoints/last/pretrained_model"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise UserError(f"--policy lerobot:{path}: no LeRobot policy there (config.json + model.safetensors in it, in "
                    "pretrained_model/ or in checkpoints/last/pretrained_model/)")  # fmt: skip


def _features(described: dict[str, dict]) -> dict[str, keys.Spec]:
    """vla specs of the policy's features as LeRobot describes them ({key: {type, shape}}, images (3, H, W))."""
    features = {}
    for key, f in described.items():
        if f["type"] == "VISUAL":
            c, h, w = f["shape"]
            features[key] = keys.Spec("uint8", (h, w, c), "pixel intensity 0-255, RGB", f"LeRobot {key}")
        elif key in (keys.OBS_STATE, keys.ACTION):
            features[key] = keys.Spec("float32", tuple(f["shape"]), "as the training data", f"LeRobot {key}")
        else:
            raise UserError(f"the LeRobot policy reads {key!r} ({f['type']}), which vla's suites do not provide")
    return features


class LeRobotPolicy:
    """A LeRobot policy in its worker process: `predict` sends the observation and returns the action due now."""

    history, chunk, n_action_steps, temporal_ensemble = 1, 1, 1, 0.0

    def __init__(self, path: str, threads: int | None = None):
        import torch

        self.path = pretrained_dir(path)
        python = lerobot_python()
        self._log = tempfile.TemporaryFile()
        threads = threads or torch.get_num_threads()
        self._proc = subprocess.Popen([python, "-P", str(WORKER), str(self.path), str(threads)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log)  # fmt: skip
        self._closer = weakref.finalize(self, _stop, self._proc, self._log)
        info, _ = self._call(None)
        self.type = info["type"]
        self.features = _features(info["features"])
        log.info("LeRobot %s policy from %s: %s", self.type, self.path, ", ".join(self.features))

    def _call(self, header: dict | None, **arrays) -> tuple[dict, dict]:
        from vla.policies.lerobot_worker import recv, send

        try:
            if header is not None:
                send(self._proc.stdin, header, **arrays)
            reply, out = recv(self._proc.stdout)
        except (BrokenPipeError, OSError):
            reply, out = None, {}
        if reply is None:
            raise UserError(f"the LeRobot worker for {self.path} stopped: {self._last_error()}")
        if "error" in reply:
            raise UserError(f"the LeRobot policy {self.path} failed: {reply['error']}")
        return reply, out

    def _last_error(self) -> str:
        self._proc.wait(timeout=30)
        self._log.seek(0)
        lines = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit code {self._proc.returncode}"

    def reset(self) -> None:
        self._call({"cmd": "reset"})

    def observe(self, obs: dict[str, np.ndarray], instruction: str) -> None: ...  # its own history: nothing to do

    def predict(self, obs: dict[str, np.ndarray], instruction: str) -> Prediction:
        arrays = {k: np.asarray(obs[k]) for k in self.features if k != keys.ACTION}
        _, out = self._call({"cmd": "act", "instruction": instruction}, **arrays)
        return Prediction(out["action"][None])  # (1, action_dim)

    def close(self) -> None:
        self._closer()


def _stop(proc: subprocess.Popen, log_file) -> None:
    from vla.policies.lerobot_worker import send

    try:
        send(proc.stdin, {"cmd": "close"})
        proc.stdin.close()
        proc.wait(timeout=10)
    except Exception:  # already gone, or stuck: make sure it ends
        proc.kill()
        proc.wait()
    log_file.close()


def load_lerobot_policy(spec: str) -> LeRobotPolicy:
    """The policy of `lerobot:PATH`."""
    return LeRobotPolicy(spec[len(PREFIX) :])
