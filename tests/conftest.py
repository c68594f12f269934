import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vla import keys  # noqa: E402
from vla.datasets.store import TrajectoryStore  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads():
    """Commands run in-process set torch's thread count for their own process (`vla control --threads`,
    eval workers); restored after each test, so a later test's numbers do not depend on which ran first."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


CAMERA = keys.image_key("front")
SPECS = {
    CAMERA: keys.image_spec("front", 8),
    keys.OBS_STATE: keys.state_spec("xyz + gripper", 4),
    keys.ACTION: keys.action_spec("dxyz + gripper", 4),
}


def synthetic_episode(i: int, length: int) -> dict[str, np.ndarray]:
    """Episode i: every value encodes (episode, step), so a test can tell exactly what it read."""
    steps = np.arange(length, dtype=np.float32)
    state = np.stack([np.full(length, i, np.float32), steps, steps * 0.5, np.zeros(length, np.float32)], 1)
    image = np.zeros((length, 8, 8, 3), np.uint8)
    image[..., 0] = i % 256
    image[..., 1] = (np.arange(length) % 256)[:, None, None]
    return {CAMERA: image, keys.OBS_STATE: state, keys.ACTION: state + 100}


def add_synthetic(store: TrajectoryStore, i: int, length: int) -> None:
    store.add_episode(
        synthetic_episode(i, length),
        instruction=f"do thing {i}",
        task=f"task-{i % 3}",
        success=i % 2 == 0,
        seed=1000 + i,
        source="expert",
    )


@pytest.fixture
def small_store(tmp_path):
    """A store of 6 synthetic episodes with lengths 5..10."""
    path = tmp_path / "small.zarr"
    with TrajectoryStore.create(path, SPECS, fps=10) as store:
        for i in range(6):
            add_synthetic(store, i, 5 + i)
    return path


@pytest.fixture(scope="session")
def metaworld_store(tmp_path_factory):
    """A small real store: 2 scripted-expert episodes each of two Meta-World tasks, 32x32 images."""
    from vla.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("mw") / "demos.zarr"
    cfg = CollectConfig(suite="metaworld", tasks="reach-v3,drawer-close-v3", episodes_per_task=2, out=str(out),
                        image_size=32, steps_after_success=3)  # fmt: skip
    collect(cfg, progress=False)
    return out


def tiny_config(store, out, **train):
    """A `tiny` model config on `store`, training into `out`."""
    from vla.config import StoreConfig, load_config

    overrides = ["policy.preset=tiny", "policy.history=3", "policy.chunk=4", "policy.n_action_steps=4",
                 "policy.foresight_offsets=[2]",
                 "train.batch_size=8", "train.log_every=1", "train.val_every=1000", "train.save_every=1000",
                 "train.warmup_steps=2", "train.bf16=false"]  # fmt: skip
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    cfg = load_config(overrides=overrides)
    cfg.data.stores = [StoreConfig(str(store))]
    cfg.train.out = str(out)
    return cfg


def fit(policy, batch: dict, steps: int, lr: float) -> list[dict]:
    """Train `policy` on one batch for `steps` AdamW steps; the metrics of every step, first to last."""
    import torch

    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss, metrics = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(metrics)
    return history
