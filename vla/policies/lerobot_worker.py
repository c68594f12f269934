"""The LeRobot side of `--policy lerobot:PATH`: run inside LeRobot's own environment, it loads a policy that
`lerobot-train` saved (ACT, Diffusion Policy, any LeRobot 0.4 policy) and answers observations with actions.

    VLA_LEROBOT_PYTHON -P vla/policies/lerobot_worker.py PRETRAINED_DIR THREADS

It imports only the standard library, numpy, torch and lerobot (never vla: the two do not install into
one environment, LeRobot 0.4.4 capping torch below vla's). Its stdout carries the protocol of
`vla.policies.lerobot_policy` (frames of `[8-byte length][4-byte header length][JSON header][npz]`);
anything printed by libraries goes to stderr. Loading and stepping follow LeRobot's own evaluation
(lerobot 0.4.4 `scripts/lerobot_eval.py`): `PreTrainedConfig.from_pretrained`, the policy class's
`from_pretrained`, `make_pre_post_processors(cfg, pretrained_path)`, then per step
`postprocessor(policy.select_action(preprocessor(batch)))` under `torch.inference_mode()`, with images as
float (1, 3, H, W) in [0, 1], vectors as float (1, D) and the instruction as `task`.
"""

import io
import json
import os
import struct
import sys


def send(out, header: dict, **arrays) -> None:
    import numpy as np

    body = io.BytesIO()
    np.savez(body, **arrays)
    head = json.dumps(header).encode()
    payload = struct.pack(">I", len(head)) + head + body.getvalue()
    out.write(struct.pack(">Q", len(payload)) + payload)
    out.flush()


def recv(inp):
    """(header, {name: array}) of the next frame, or (None, {}) at the end of the input."""
    import numpy as np

    size = inp.read(8)
    if len(size) < 8:
        return None, {}
    payload = inp.read(struct.unpack(">Q", size)[0])
    n = struct.unpack(">I", payload[:4])[0]
    header = json.loads(payload[4 : 4 + n])
    with np.load(io.BytesIO(payload[4 + n :]), allow_pickle=False) as z:
        return header, {k: z[k] for k in z.files}


def load(path: str):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    cfg = PreTrainedConfig.from_pretrained(path)
    cfg.device = "cpu"
    policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg)
    policy.eval()
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=path, preprocessor_overrides={"device_processor": {"device": "cpu"}}
    )
    return cfg, policy, pre, post


def step(policy, pre, post, header: dict, arrays: dict):
    """One action (action_dim,) float32 for the observation `arrays` (uint8 (H, W, 3) images, vectors)."""
    import numpy as np
    import torch

    batch = {}
    for key, value in arrays.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if value.dtype == np.uint8:  # (H, W, 3) -> (1, 3, H, W) in [0, 1]
            batch[key] = tensor.permute(2, 0, 1)[None].float() / 255.0
        else:
            batch[key] = tensor[None].float()
    batch["task"] = [header.get("instruction", "")]
    with torch.inference_mode():
        action = post(policy.select_action(pre(batch)))
    return action.cpu().numpy().reshape(-1).astype(np.float32)


def main(path: str, threads: int) -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # library prints go to stderr; fd 1's copy carries the protocol alone
    inp = sys.stdin.buffer
    import torch

    torch.set_num_threads(threads)
    cfg, policy, pre, post = load(path)
    features = {k: {"type": f.type.name, "shape": list(f.shape)}
                for k, f in {**cfg.input_features, **cfg.output_features}.items()}  # fmt: skip
    send(out, {"type": cfg.type, "features": features, "n_action_steps": getattr(cfg, "n_action_steps", 1),
               "versions": {"torch": torch.__version__}})  # fmt: skip
    while True:
        header, arrays = recv(inp)
        if header is None or header.get("cmd") == "close":
            return
        try:
            if header["cmd"] == "reset":
                policy.reset()
                send(out, {"ok": True})
            else:
                send(out, {"ok": True}, action=step(policy, pre, post, header, arrays))
        except Exception as e:  # reported to vla, which raises it there
            send(out, {"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
